"""`cowtrace PID` / `cowtrace trace PID`: attach to a running process and its family."""

from __future__ import annotations

import sys

from cowtrace.checks import require_tracing_ready
from cowtrace.commands.common import (
    OutputOptions,
    Reporter,
    StopSignals,
    start_metrics,
    trace_until_stopped,
    view_stream,
)
from cowtrace.session import Session, SessionOptions, validate_target

MALLOC_WARNING = (
    "cowtrace: warning: --malloc puts uprobes on malloc and free in the traced root (and in "
    "members that exec), in no other process: each of their calls costs 2-30 us more, and the "
    "probes come off a process they take more than a quarter of the time of"
)


def trace(pid: int, options: OutputOptions, session_options: SessionOptions) -> int:
    """Trace until Ctrl-C, SIGTERM, --duration or the root's exit; 0 on a clean end."""
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
