"""The `cowtrace` command line: trace, run, doctor, demo, report.

`cowtrace PID` is short for `cowtrace trace PID`.  Every error the user can act on is one line
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

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
METRICS_ADDR = typer.Option(
    None,
    "--metrics-addr",
    metavar="[HOST:]PORT",
    help="Serve Prometheus metrics here (a bare PORT binds 127.0.0.1; port 0: any free port).",
)
PID_LABEL_GRACE = typer.Option(
    300.0,
    "--pid-label-grace",
    min=0.0,
    metavar="SECONDS",
    help="Keep an exited member's pid-labelled series this long, then drop them.",
)
NO_PID_LABELS = typer.Option(
    False, "--no-pid-labels", help="Metrics summed by root, role and comm instead of per pid."
)
DELAYACCT = typer.Option(
    False,
    "--delayacct",
    help="Export the kernel's time spent copying per member (sets kernel.task_delayacct=1).",
)
MALLOC = typer.Option(
    None,
    "--malloc/--no-malloc",
    help="Uprobes on malloc & co. to attribute copies to allocated blocks (default: on for "
    "`run` and `demo`, off when attaching to a PID: each call then costs microseconds).",
)
EXIT_WINDOW = typer.Option(
    0.5,
    "--exit-window",
    min=0.0,
    metavar="SECONDS",
    help="Copies made this close before a process exits are reported as exit-time copies.",
)
NO_STACKS = typer.Option(
    False, "--no-stacks", help="Do not capture native writer and allocation stacks."
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


def _with_metrics(options, addr, grace, no_pid_labels, delayacct):  # noqa: ANN001, ANN202
    from cowtrace.metrics.exporter import metrics_options

    options.metrics = metrics_options(addr, grace, no_pid_labels, delayacct)
    return options


def _session_options(  # noqa: ANN202
    events_path,  # noqa: ANN001
    ring_mb,  # noqa: ANN001
    hold_events,  # noqa: ANN001
    *,
    malloc: bool,
    exit_window: float = 0.5,
    no_stacks: bool = False,
    python_stacks: bool = True,
):
    from cowtrace.session import SessionOptions

    return SessionOptions(
        events_path=events_path,
        ring_bytes=ring_mb << 20,
        hold_events_s=hold_events,
        malloc=malloc,
        stacks=not no_stacks,
        exit_window_s=exit_window,
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
    malloc: bool | None = MALLOC,
    exit_window: float = EXIT_WINDOW,
    no_stacks: bool = NO_STACKS,
    hold_events: float = HOLD_EVENTS,
    metrics_addr: str | None = METRICS_ADDR,
    pid_label_grace: float = PID_LABEL_GRACE,
    no_pid_labels: bool = NO_PID_LABELS,
    delayacct: bool = DELAYACCT,
    python_stacks: bool = PYTHON_STACKS,
) -> None:
    """Attach to a running process and trace it and every process it forks.

    Workers that already exist are adopted; new ones are tracked from their first
    instruction. Ctrl-C, SIGTERM, --duration or the root's exit end it with a summary.

    Examples:

      sudo cowtrace 1234

      sudo cowtrace trace 1234 --duration 30 --plain

      sudo cowtrace 1234 --quiet --duration 60 --json out.json --events events.jsonl

      sudo cowtrace 1234 --malloc --duration 30   # also attribute copies to malloc'd blocks
    """
    from cowtrace.commands.trace import trace

    raise typer.Exit(
        trace(
            pid,
            _with_metrics(
                _options(duration, interval, json_path, events_path, quiet, plain),
                metrics_addr,
                pid_label_grace,
                no_pid_labels,
                delayacct,
            ),
            _session_options(
                events_path,
                ring_mb,
                hold_events,
                malloc=bool(malloc),
                exit_window=exit_window,
                no_stacks=no_stacks,
                python_stacks=python_stacks,
            ),
        )
    )


@app.command(
    "run",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def run_cmd(
    command: list[str] = typer.Argument(
        ...,
        metavar="-- COMMAND [ARGS]...",
        help="The command to start, after --.",
        show_default=False,
    ),
    duration: float | None = DURATION,
    interval: float = INTERVAL,
    json_path: str | None = JSON_PATH,
    events_path: str | None = EVENTS_PATH,
    quiet: bool = QUIET,
    plain: bool = PLAIN,
    ring_mb: int = RING_MB,
    malloc: bool | None = MALLOC,
    exit_window: float = EXIT_WINDOW,
    no_stacks: bool = NO_STACKS,
    hold_events: float = HOLD_EVENTS,
    metrics_addr: str | None = METRICS_ADDR,
    pid_label_grace: float = PID_LABEL_GRACE,
    no_pid_labels: bool = NO_PID_LABELS,
    delayacct: bool = DELAYACCT,
    python_stacks: bool = PYTHON_STACKS,
) -> None:
    """Start COMMAND with tracing active before its first fork.

    Its stdin, stdout and stderr pass through untouched (cowtrace's view goes to stderr);
    cowtrace exits with the command's exit status.

    Examples:

      sudo cowtrace run -- python3 -m gunicorn --preload -w 4 app:app

      sudo cowtrace run --quiet --json - -- ./prefork-server --workers 8

      sudo cowtrace run --no-malloc --exit-window 1 -- redis-server
    """
    from cowtrace.commands.run import run

    raise typer.Exit(
        run(
            command,
            _with_metrics(
                _options(duration, interval, json_path, events_path, quiet, plain),
                metrics_addr,
                pid_label_grace,
                no_pid_labels,
                delayacct,
            ),
            _session_options(
                events_path,
                ring_mb,
                hold_events,
                malloc=malloc is None or malloc,
                exit_window=exit_window,
                no_stacks=no_stacks,
                python_stacks=python_stacks,
            ),
        )
    )


@app.command("agent")
def agent_cmd(
    comm: str | None = typer.Option(
        None,
        "--comm",
        metavar="REGEX",
        help="Trace every family whose root's name matches REGEX (searched, as pgrep does).",
    ),
    pids: list[int] = typer.Option(
        [], "--pid", metavar="PID", help="Trace this process' family (repeatable)."
    ),
    metrics_addr: str = typer.Option(
        "127.0.0.1:9949",
        "--metrics-addr",
        metavar="[HOST:]PORT",
        help="Where to serve Prometheus metrics (0.0.0.0:9949 for a fleet's Prometheus).",
    ),
    interval: float = typer.Option(
        5.0, "--interval", min=0.05, help="Seconds between metric refreshes (smaps is read then)."
    ),
    scan_interval: float = typer.Option(
        1.0, "--scan-interval", min=0.05, help="Seconds between /proc scans for new roots."
    ),
    pid_label_grace: float = PID_LABEL_GRACE,
    no_pid_labels: bool = NO_PID_LABELS,
    delayacct: bool = DELAYACCT,
    duration: float | None = DURATION,
    ring_mb: int = RING_MB,
) -> None:
    """Export metrics for every matching process family on this node, until stopped.

    New matching roots are picked up as they start; families come and go, the agent stays.
    SIGTERM or SIGINT end it.

    Examples:

      sudo cowtrace agent --comm '^gunicorn$' --metrics-addr 0.0.0.0:9949

      sudo cowtrace agent --pid 1234 --pid 5678 --delayacct
    """
    from cowtrace.agent.command import AgentOptions, agent

    raise typer.Exit(
        agent(
            AgentOptions(
                comm=comm,
                pids=list(pids),
                metrics=_with_metrics_options(
                    metrics_addr, pid_label_grace, no_pid_labels, delayacct
                ),
                interval=interval,
                scan_interval=scan_interval,
                duration=duration,
                ring_bytes=ring_mb << 20,
            )
        )
    )


def _with_metrics_options(addr, grace, no_pid_labels, delayacct):  # noqa: ANN001, ANN202
    from cowtrace.metrics.exporter import metrics_options

    return metrics_options(addr, grace, no_pid_labels, delayacct)


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
    malloc: bool | None = MALLOC,
    exit_window: float = EXIT_WINDOW,
    no_stacks: bool = NO_STACKS,
) -> None:
    """Trace the bundled pre-fork demo: a master and workers writing to inherited memory.

    Examples:

      sudo cowtrace demo

      sudo cowtrace demo --duration 10 --plain

      sudo cowtrace demo --no-malloc --no-stacks
    """
    from cowtrace.commands.demo import demo

    raise typer.Exit(
        demo(
            duration,
            plain,
            _session_options(
                None,
                16,
                0.0,
                malloc=malloc is None or malloc,
                exit_window=exit_window,
                no_stacks=no_stacks,
            ),
        )
    )


@app.command("report")
def report_cmd(
    file: str = typer.Argument(
        ..., metavar="FILE", help="A --json summary or --events log ('-': stdin)."
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        metavar="FORMAT",
        help="text (default), html, folded, speedscope or pprof.",
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", metavar="OUT", help="Write to OUT instead of stdout."
    ),
    diff: str | None = typer.Option(
        None,
        "--diff",
        metavar="BEFORE",
        help="Compare FILE with BEFORE, an earlier run: what grew and what shrank (text, folded).",
    ),
    html: str | None = typer.Option(
        None, "--html", metavar="OUT", help="Same as --format html -o OUT."
    ),
    top: int | None = typer.Option(
        None, "--top", min=1, metavar="N", help="Rows per ranked table (default 10; 50 in html)."
    ),
) -> None:
    """Render a summary (--json) or event log (--events) as a report or a profile.

    text (the default) goes to stdout: totals, processes, top mappings, allocation sites and
    writer stacks. html writes one page with no network resources: a flame graph of copied
    bytes by writer stack, the same breakdowns and the per-process table. folded (flamegraph.pl,
    inferno), speedscope and pprof (go tool pprof, Pyroscope) carry the writer stacks weighted
    by copied bytes. --diff BEFORE FILE compares two runs. An event log is aggregated here
    (streamed). Needs no root.

    Examples:

      cowtrace report summary.json

      cowtrace report events.jsonl --top 20

      cowtrace report summary.json --html report.html

      cowtrace report summary.json --format folded | flamegraph.pl > copies.svg

      cowtrace report summary.json --format pprof -o copies.pb.gz

      cowtrace report --diff before.json after.json

      sudo cowtrace run --quiet --json - -- ./server | cowtrace report -
    """
    from cowtrace.commands.report import report

    raise typer.Exit(report(file, html, top, fmt=fmt, out=output, diff=diff))


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
        if os.environ.get("COWTRACE_DEBUG"):  # for bug reports: the whole traceback
            traceback.print_exc()
        return 70
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
