"""`cowtrace agent`: export metrics for every matching process family on this node.

The options and the set-up and tear-down are here; what runs each tick (root discovery, the
fleet of families, the refresh of the metrics) is cowtrace/agent/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace.commands.options import (
    Delayacct,
    Duration,
    NoPidLabels,
    PidLabelGrace,
    PythonTypesBudget,
    PythonTypesTop,
    RingMb,
)
from cowtrace.errors import CowtraceError
from cowtrace.python.budget import DEFAULT_SHARE

if TYPE_CHECKING:
    from cowtrace.agent.loop import AgentOptions


def command(
    comm: Annotated[
        str | None,
        typer.Option(
            "--comm",
            metavar="REGEX",
            help="Trace every family whose root's name matches REGEX (searched, as pgrep does).",
        ),
    ] = None,
    pids: Annotated[
        list[int] | None,
        typer.Option("--pid", "-p", metavar="PID", help="Trace this process' family (repeatable)."),
    ] = None,
    metrics_addr: Annotated[
        str,
        typer.Option(
            "--metrics-addr",
            metavar="[HOST:]PORT",
            help="Where to serve Prometheus metrics (0.0.0.0:9949 for a fleet's Prometheus).",
        ),
    ] = "127.0.0.1:9949",
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=0.05,
            help="Seconds between metric refreshes (smaps is read then).",
        ),
    ] = 5.0,
    scan_interval: Annotated[
        float,
        typer.Option(
            "--scan-interval", min=0.05, help="Seconds between /proc scans for new roots."
        ),
    ] = 1.0,
    pid_label_grace: PidLabelGrace = 300.0,
    no_pid_labels: NoPidLabels = False,
    delayacct: Delayacct = False,
    duration: Duration = None,
    ring_mb: RingMb = 16,
    python_types_top: PythonTypesTop = 20,
    python_types_budget: PythonTypesBudget = DEFAULT_SHARE,
) -> None:
    """Export metrics for every matching process family on this node, until stopped.

    New matching roots are picked up as they start; families come and go, the agent stays.
    SIGTERM or SIGINT end it.

    Examples:

      sudo cowtrace agent --comm '^gunicorn$' --metrics-addr 0.0.0.0:9949

      sudo cowtrace agent --pid 1234 --pid 5678 --delayacct
    """
    from cowtrace.agent.loop import AgentOptions
    from cowtrace.metrics.exporter import metrics_options

    options = AgentOptions(
        comm=comm,
        pids=list(pids or []),
        metrics=metrics_options(
            metrics_addr, pid_label_grace, no_pid_labels, delayacct, python_types_top
        ),
        interval=interval,
        scan_interval=scan_interval,
        duration=duration,
        ring_bytes=ring_mb << 20,
        python_types_budget=python_types_budget,
    )
    raise typer.Exit(agent(options))


def agent(options: AgentOptions) -> int:
    """Trace and export until SIGTERM or SIGINT (or --duration); 0 on a clean end."""
    # Imported here, not at the top: `--help` and shell completion import this module.
    from cowtrace.agent.discovery import RootMatcher
    from cowtrace.agent.fleet import Fleet
    from cowtrace.agent.loop import describe, log, serve
    from cowtrace.checks import require_tracing_ready
    from cowtrace.commands.common import StopSignals
    from cowtrace.host import procfs
    from cowtrace.metrics.exporter import MetricsExporter

    matcher = RootMatcher.from_options(options.comm, options.pids)
    if options.metrics is None:
        raise CowtraceError("the agent needs --metrics-addr")
    for pid in options.pids:
        if procfs.read_stat(pid) is None:
            log(f"no process with pid {pid} yet: it will be traced if it appears")
    require_tracing_ready()
    fleet = Fleet(
        ring_bytes=options.ring_bytes,
        grace_s=options.metrics.pid_label_grace_s,
        python_types_budget=options.python_types_budget,
    )
    exporter = MetricsExporter(options.metrics, log=log)
    try:
        with StopSignals() as stops:
            exporter.open()
            fleet.open()
            log(f"ready: tracing families of {describe(matcher)}")
            reason = serve(fleet, exporter, matcher, options, stops)
        log(f"stopping: {reason}")
    finally:
        fleet.close()
        exporter.close()
    return 0
