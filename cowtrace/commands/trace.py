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
    "cowtrace: warning: --malloc puts a uprobe on malloc and free: each call of every process "
    "using that allocator costs about 2 us more while tracing"
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
