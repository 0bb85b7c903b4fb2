"""The `cowtrace` command line: trace, run, doctor, demo.

`cowtrace PID` is short for `cowtrace trace PID`.  Every error the user can act on is one line
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import re
import sys

import typer

from cowtrace import __version__
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

DURATION = typer.Option(None, "--duration", min=0.0, help="Stop by itself after SECONDS.")
INTERVAL = typer.Option(1.0, "--interval", min=0.05, help="Seconds between view refreshes.")
JSON_PATH = typer.Option(
    None, "--json", metavar="PATH", help="Write a JSON summary when tracing ends ('-': stdout)."
)
EVENTS_PATH = typer.Option(
    None, "--events", metavar="PATH", help="Write one JSON line per classified event ('-': stdout)."
)
QUIET = typer.Option(False, "--quiet", "-q", help="No view and no summary on the terminal.")
PLAIN = typer.Option(False, "--plain", help="Plain periodic lines instead of the live view.")
RING_MB = typer.Option(
    16, "--ring-mb", min=1, help="Size of the kernel's detail-event ring buffer, in MiB."
)
PYTHON_STACKS = typer.Option(
    True,
    "--python-stacks/--no-python-stacks",
    help="Capture the Python stack of each copy in CPython members (3.11-3.13).",
)
HOLD_EVENTS = typer.Option(
    0.0, "--hold-events", hidden=True, help="Testing aid: do not drain detail events for SECONDS."
)


def _options(duration, interval, json_path, events_path, quiet, plain):  # noqa: ANN001, ANN202
    from cowtrace.commands.common import OutputOptions

    return OutputOptions(
        duration=duration,
        interval=interval,
        json_path=json_path,
        events_path=events_path,
        quiet=quiet,
        plain=plain,
    )


def _session_options(events_path, ring_mb, hold_events, python_stacks=True):  # noqa: ANN001, ANN202
    from cowtrace.session import SessionOptions

    return SessionOptions(
        events_path=events_path,
        ring_bytes=ring_mb << 20,
        hold_events_s=hold_events,
        python_stacks=python_stacks,
    )


@app.command("trace")
def trace_cmd(
    pid: int = typer.Argument(..., help="The root process: a pre-fork server's master."),
    duration: float | None = DURATION,
    interval: float = INTERVAL,
    json_path: str | None = JSON_PATH,
    events_path: str | None = EVENTS_PATH,
    quiet: bool = QUIET,
    plain: bool = PLAIN,
    ring_mb: int = RING_MB,
    hold_events: float = HOLD_EVENTS,
    python_stacks: bool = PYTHON_STACKS,
) -> None:
    """Attach to a running process and trace it and every process it forks.

    Workers that already exist are adopted; new ones are tracked from their first
    instruction. Ctrl-C, SIGTERM, --duration or the root's exit end it with a summary.

    Examples:

      sudo cowtrace 1234

      sudo cowtrace trace 1234 --duration 30 --plain

      sudo cowtrace 1234 --quiet --duration 60 --json out.json --events events.jsonl
    """
    from cowtrace.commands.trace import trace

    raise typer.Exit(
        trace(
            pid,
            _options(duration, interval, json_path, events_path, quiet, plain),
            _session_options(events_path, ring_mb, hold_events, python_stacks),
        )
    )


@app.command(
    "run",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def run_cmd(
    command: list[str] = typer.Argument(..., metavar="-- COMMAND [ARGS]..."),
    duration: float | None = DURATION,
    interval: float = INTERVAL,
    json_path: str | None = JSON_PATH,
    events_path: str | None = EVENTS_PATH,
    quiet: bool = QUIET,
    plain: bool = PLAIN,
    ring_mb: int = RING_MB,
    hold_events: float = HOLD_EVENTS,
    python_stacks: bool = PYTHON_STACKS,
) -> None:
    """Start COMMAND with tracing active before its first fork.

    Its stdin, stdout and stderr pass through untouched (cowtrace's view goes to stderr);
    cowtrace exits with the command's exit status.

    Examples:

      sudo cowtrace run -- python3 -m gunicorn --preload -w 4 app:app

      sudo cowtrace run --quiet --json - -- ./prefork-server --workers 8
    """
    from cowtrace.commands.run import run

    raise typer.Exit(
        run(
            command,
            _options(duration, interval, json_path, events_path, quiet, plain),
            _session_options(events_path, ring_mb, hold_events, python_stacks),
        )
    )


@app.command("doctor")
def doctor_cmd(
    fix: bool = typer.Option(
        False, "--fix", help="Also link Debian's kernel headers for this kernel."
    ),
) -> None:
    """Check whether this host can run cowtrace, and say how to fix what is missing.

    Exit status 0 only when tracing will work.

    Examples:

      sudo cowtrace doctor

      sudo cowtrace doctor --fix
    """
    from cowtrace.commands.doctor import doctor

    raise typer.Exit(doctor(fix))


@app.command("demo")
def demo_cmd(
    duration: float = typer.Option(20.0, "--duration", min=1.0, help="How long to trace."),
    plain: bool = PLAIN,
) -> None:
    """Trace the bundled pre-fork demo: a master and workers writing to inherited memory.

    Examples:

      sudo cowtrace demo

      sudo cowtrace demo --duration 10 --plain
    """
    from cowtrace.commands.demo import demo

    raise typer.Exit(demo(duration, plain))


@app.command("version")
def version_cmd() -> None:
    """Print cowtrace's version."""
    print(__version__)


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
        return 70
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
