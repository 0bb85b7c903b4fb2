"""The `cowtrace agent` loop: scan for roots, trace, export, until SIGTERM or SIGINT.

A target exiting never ends the agent; only a signal or --duration does.  Everything it says
goes to stderr, one line per event (journald and `kubectl logs` keep them).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from cowtrace import procfs
from cowtrace.agent.discovery import RootMatcher, new_roots
from cowtrace.agent.fleet import Fleet
from cowtrace.checks import require_tracing_ready
from cowtrace.commands.common import StopSignals
from cowtrace.errors import CowtraceError
from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions, tracer_health


@dataclass
class AgentOptions:
    comm: str | None
    pids: list[int]
    metrics: MetricsOptions | None
    interval: float = 5.0
    scan_interval: float = 1.0
    duration: float | None = None
    ring_bytes: int = 16 << 20


def _log(message: str) -> None:
    print(f"cowtrace agent: {message}", file=sys.stderr, flush=True)


def attach_new_roots(fleet: Fleet, matcher: RootMatcher) -> None:
    """Start tracing every matching root not traced yet (oldest first)."""
    own = os.getpid()
    for stat in new_roots(procfs.all_processes(), matcher, fleet.is_traced, own):
        fresh = procfs.read_stat(stat.pid)
        if fresh is None or fresh.state in ("Z", "X") or fleet.is_traced(stat.pid):
            continue
        if fleet.add_root(fresh):
            members = len(fleet.families[fresh.pid].family.members)
            _log(f"tracing {fresh.comm} (pid {fresh.pid}) and {members - 1} descendants")


def describe(matcher: RootMatcher) -> str:
    parts = [f"comm ~ {matcher.comm.pattern!r}"] if matcher.comm is not None else []
    parts += [f"pid {pid}" for pid in sorted(matcher.pids)]
    return ", ".join(parts)


def agent(options: AgentOptions) -> int:
    matcher = RootMatcher.from_options(options.comm, options.pids)
    if options.metrics is None:
        raise CowtraceError("the agent needs --metrics-addr")
    for pid in options.pids:
        if procfs.read_stat(pid) is None:
            _log(f"no process with pid {pid} yet: it will be traced if it appears")
    require_tracing_ready()
    fleet = Fleet(ring_bytes=options.ring_bytes, grace_s=options.metrics.pid_label_grace_s)
    exporter = MetricsExporter(options.metrics, log=_log)
    try:
        with StopSignals() as stops:
            exporter.open()
            fleet.open()
            _log(f"ready: tracing families of {describe(matcher)}")
            reason = _loop(fleet, exporter, matcher, options, stops)
        _log(f"stopping: {reason}")
    finally:
        fleet.close()
        exporter.close()
    return 0


def _loop(
    fleet: Fleet,
    exporter: MetricsExporter,
    matcher: RootMatcher,
    options: AgentOptions,
    stops: StopSignals,
) -> str:
    started = time.monotonic()
    deadline = None if options.duration is None else started + options.duration
    next_scan = started
    next_refresh = started
    known: set[int] = set()
    while True:
        reason = stops.check()
        if reason:
            return reason
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "duration reached"
        if now >= next_scan:
            attach_new_roots(fleet, matcher)
            next_scan = now + options.scan_interval
        if now >= next_refresh:
            snapshots = fleet.refresh()
            exporter.update(snapshots, tracer_health(fleet.tracer, fleet.events_drained))
            roots = set(fleet.families)
            for root in sorted(known - roots):
                _log(f"family of pid {root} ended")
            known = roots
            next_refresh = now + options.interval
        wait = min(next_scan, next_refresh) - time.monotonic()
        fleet.step(max(0.0, min(0.1, wait)))
