"""`cowtrace PID` / `cowtrace trace PID`: attach to a running process and its family."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace.commands.options import TracingOptions, with_tracing_options
from cowtrace.errors import CowtraceError

if TYPE_CHECKING:
    from cowtrace.commands.common import OutputOptions
    from cowtrace.session import SessionOptions

MALLOC_WARNING = (
    "cowtrace: warning: --malloc puts uprobes on malloc and free in the traced root (and in "
    "members that exec), in no other process: each of their calls costs 2-30 us more, and the "
    "probes come off a process they take more than a quarter of the time of"
)


@with_tracing_options
def command(
    pid: Annotated[
        int | None,
        typer.Argument(
            metavar="PID",
            help="The root process: a pre-fork server's master.",
            show_default=False,
        ),
    ] = None,
    pid_option: Annotated[
        int | None,
        typer.Option("--pid", "-p", metavar="PID", help="The root process, given as an option."),
    ] = None,
    *,
    tracing: TracingOptions,
) -> None:
    """Attach to a running process and trace it and every process it forks.

    Workers that already exist are adopted; new ones are tracked from their first
    instruction. Ctrl-C, SIGTERM, --duration or the root's exit end it with a summary.

    Examples:

      sudo cowtrace 1234

      sudo cowtrace trace 1234 --duration 30 --plain

      sudo cowtrace -p 1234 --quiet --duration 60 --json out.json --events events.jsonl

      sudo cowtrace 1234 --malloc --duration 30   # also attribute copies to malloc'd blocks
    """
    root = root_pid(pid, pid_option)
    raise typer.Exit(
        trace(root, tracing.output_options(), tracing.session_options(malloc_by_default=False))
    )


def root_pid(argument: int | None, option: int | None) -> int:
    """The PID given as the argument or with -p/--pid: exactly one of them (or both alike)."""
    if argument is None and option is None:
        hint = "cowtrace trace PID, or cowtrace -p PID"
        raise CowtraceError("no PID given", hint=hint, exit_code=2)
    if argument is not None and option is not None and argument != option:
        raise CowtraceError(f"two different PIDs given: {argument} and -p {option}", exit_code=2)
    return argument if argument is not None else option  # type: ignore[return-value]


def trace(pid: int, options: OutputOptions, session_options: SessionOptions) -> int:
    """Trace until Ctrl-C, SIGTERM, --duration or the root's exit; 0 on a clean end."""
    # Imported here, not at the top: `--help` and shell completion import this module.
    from cowtrace.checks import require_tracing_ready
    from cowtrace.commands.common import (
        Reporter,
        StopSignals,
        start_metrics,
        trace_until_stopped,
        view_stream,
    )
    from cowtrace.session import Session, validate_target

    stat = validate_target(pid)
    require_tracing_ready()
    if session_options.malloc:  # on stderr even with --quiet: it is about the target's cost
        print(MALLOC_WARNING, file=sys.stderr)
    session = Session(pid, session_options)
    exporter = start_metrics(options)
    try:
        with StopSignals() as stops:
            session.open()
            stat = validate_target(pid)  # it may have exited while the program compiled
            session.attach_root(stat, adopted=True)
            reporter = Reporter(options, view_stream(options, command_owns_stdout=False))
            trace_until_stopped(session, options, stops, reporter, exporter=exporter)
    finally:
        session.close()
        if exporter is not None:
            exporter.close()
    return 0
