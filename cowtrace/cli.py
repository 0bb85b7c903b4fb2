"""The `cowtrace` command line: the app, its commands and its error handling.

Each command is a module under cowtrace/commands/ that declares its options and body; this
module registers them.  `cowtrace PID` is short for `cowtrace trace PID`.  Every error the user
can act on is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

import typer

from cowtrace.commands import agent, demo, doctor, report, run, trace, version
from cowtrace.errors import CowtraceError

app = typer.Typer(
    name="cowtrace",
    help=(
        "Live copy-on-write tracing of a process family after fork(): which process broke "
        "sharing, whether the kernel copied the page or reused it, and how much.\n\n"
        "Examples:\n\n"
        "  sudo cowtrace 1234                      # attach to a running master and its workers\n\n"
        "  sudo cowtrace run -- gunicorn --preload app:app\n\n"
        "  sudo cowtrace 1234 --duration 60 --json summary.json --events events.jsonl\n\n"
        "  sudo cowtrace doctor                    # can this host trace?\n\n"
        "x86-64 Linux only; needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

app.command("trace")(trace.command)
app.command("run", context_settings=run.CONTEXT_SETTINGS)(run.command)
app.command("agent")(agent.command)
app.command("doctor")(doctor.command)
app.command("demo")(demo.command)
app.command("report")(report.command)
app.command("version")(version.command)


def _argv_with_default_command(argv: list[str]) -> list[str]:
    """`cowtrace PID ...` means `cowtrace trace PID ...`."""
    if argv and re.fullmatch(r"-?\d+", argv[0]):
        return ["trace", *argv[1:], "--", argv[0]]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = _argv_with_default_command(list(sys.argv[1:] if argv is None else argv))
    try:
        result = app(args=args, prog_name="cowtrace", standalone_mode=False)
    except CowtraceError as error:
        print(f"cowtrace: error: {error}", file=sys.stderr)
        return error.exit_code
    except typer.Exit as done:
        return done.exit_code
    except KeyboardInterrupt:
        print("cowtrace: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # usage errors and anything unforeseen: one line
        # Usage errors come from click, which typer may ship as its own private copy: match
        # them by their interface rather than import a module that may not exist.
        if hasattr(error, "show") and isinstance(getattr(error, "exit_code", None), int):
            error.show()
            return error.exit_code
        if type(error).__name__ == "Abort":
            return 130
        print(f"cowtrace: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        if os.environ.get("COWTRACE_DEBUG"):  # for bug reports: the whole traceback
            traceback.print_exc()
        return 70
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
