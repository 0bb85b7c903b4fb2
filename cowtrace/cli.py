"""The `cowtrace` command line: the app, its commands and its error handling.

Each command is a module under cowtrace/commands/ that declares its options and body; this
module registers them.  `cowtrace PID` and `cowtrace -p PID` are short for `cowtrace trace PID`.
Every error the user can act on, usage errors included, is one line on stderr and a non-zero
exit, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Annotated

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
        "  sudo cowtrace -p 1234                   # the same (cowtrace trace 1234)\n\n"
        "  sudo cowtrace run -- gunicorn --preload app:app\n\n"
        "  sudo cowtrace 1234 --duration 60 --json summary.json --events events.jsonl\n\n"
        "  sudo cowtrace doctor                    # can this host trace?\n\n"
        "x86-64 Linux only; needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _print_version(requested: bool) -> None:
    if requested:
        from cowtrace import __version__

        print(f"cowtrace {__version__}")
        raise typer.Exit(0)


@app.callback()
def _top_level(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print cowtrace's version and exit.",
        ),
    ] = False,
) -> None:
    """The options that come before the command."""


app.command("trace")(trace.command)
app.command("run", context_settings=run.CONTEXT_SETTINGS)(run.command)
app.command("agent")(agent.command)
app.command("doctor")(doctor.command)
app.command("demo")(demo.command)
app.command("report")(report.command)
app.command("version")(version.command)

_PID = re.compile(r"-?\d+")
_PID_OPTION = re.compile(r"-p.*|--pid(=.*)?")


def _argv_with_default_command(argv: list[str]) -> list[str]:
    """`cowtrace PID ...` and `cowtrace -p PID ...` mean `cowtrace trace PID ...`."""
    if argv and _PID.fullmatch(argv[0]):
        return ["trace", *argv[1:], "--", argv[0]]
    if argv and _PID_OPTION.fullmatch(argv[0]):
        return ["trace", *argv]
    return argv


def _complete_with_default_command(environ: dict[str, str]) -> None:
    """Shell completion of `cowtrace PID --<TAB>` and `cowtrace -p PID --<TAB>`: the words the
    shell hands over (bash: COMP_WORDS/COMP_CWORD, zsh and fish: _TYPER_COMPLETE_ARGS) get the
    `trace` the shorthand stands for, as `main` gives it to the command line itself."""
    if "_COWTRACE_COMPLETE" not in environ:
        return
    for name in ("COMP_WORDS", "_TYPER_COMPLETE_ARGS"):
        words = environ.get(name, "").split(" ")
        # Only once the shorthand is complete (a word after it), never while typing the pid.
        if len(words) > 2 and (_PID.fullmatch(words[1]) or _PID_OPTION.fullmatch(words[1])):
            environ[name] = " ".join([words[0], "trace", *words[1:]])
            if name == "COMP_WORDS" and environ.get("COMP_CWORD", "").isdigit():
                environ["COMP_CWORD"] = str(int(environ["COMP_CWORD"]) + 1)


def _usage_error_line(error: Exception) -> str:
    """A click error (bad option, missing argument) as one line, naming the command's --help."""
    message = " ".join(str(error.format_message()).split()).rstrip(".")  # type: ignore[attr-defined]
    context = getattr(error, "ctx", None)
    if context is not None:
        message += f" (see {context.command_path} --help)"
    return f"cowtrace: error: {message}"


def main(argv: list[str] | None = None) -> int:
    args = _argv_with_default_command(list(sys.argv[1:] if argv is None else argv))
    _complete_with_default_command(os.environ)
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
            if type(error).__name__ == "NoArgsIsHelpError":  # bare `cowtrace`: the help
                error.show()
            else:
                print(_usage_error_line(error), file=sys.stderr)
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
