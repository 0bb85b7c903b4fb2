"""The `cowtrace agent` loop: scan for new roots, refresh the metrics, drain the tracer.

A target exiting never ends the agent; only a signal or --duration does.  Everything it says
goes to stderr, one line per event (journald and `kubectl logs` keep them).  The command itself
(its options, set-up and tear-down) is cowtrace/commands/agent.py.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from cowtrace.agent.discovery import RootMatcher, new_roots
from cowtrace.agent.fleet import Fleet
from cowtrace.commands.common import StopSignals
from cowtrace.host import procfs
from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions, tracer_health
from cowtrace.python.budget import DEFAULT_SHARE


@dataclass
class AgentOptions:
    """What `cowtrace agent` was asked for (cowtrace/commands/agent.py declares the options)."""

    comm: str | None
    pids: list[int]
    metrics: MetricsOptions | None
    interval: float = 5.0
    scan_interval: float = 1.0
    duration: float | None = None
    ring_bytes: int = 16 << 20
    python_types_budget: float | None = DEFAULT_SHARE  # python/budget.py; None: no limit


def log(message: str) -> None:
    """One line on stderr, flushed: the agent's log is journald's or the container's."""
    print(f"cowtrace agent: {message}", file=sys.stderr, flush=True)


FULL_SCAN_S = 60.0  # /proc is rescanned at least this often, even with no exec or rename


def attach_new_roots(fleet: Fleet, matcher: RootMatcher) -> None:
    """Start tracing every matching root not traced yet (oldest first)."""
    own = os.getpid()
    for stat in new_roots(procfs.all_processes(), matcher, fleet.is_traced, own):
        fresh = procfs.read_stat(stat.pid)
        if fresh is None or fresh.state in ("Z", "X") or fleet.is_traced(stat.pid):
            continue
        if fleet.add_root(fresh):
            members = len(fleet.families[fresh.pid].family.members)
            log(f"tracing {fresh.comm} (pid {fresh.pid}) and {members - 1} descendants")


def describe(matcher: RootMatcher) -> str:
    parts = [f"comm ~ {matcher.comm.pattern!r}"] if matcher.comm is not None else []
    parts += [f"pid {pid}" for pid in sorted(matcher.pids)]
    return ", ".join(parts)


def serve(
    fleet: Fleet,
    exporter: MetricsExporter,
    matcher: RootMatcher,
    options: AgentOptions,
    stops: StopSignals,
) -> str:
    """Run until a signal or --duration; the reason it stopped."""
    started = time.monotonic()
    deadline = None if options.duration is None else started + options.duration
    next_scan = started
    next_full_scan = started
    scanned_at_renames = -1
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
            # /proc is read again only when a process exec'd or was renamed somewhere (the
            # only ways to start matching --comm), and as a safety net every FULL_SCAN_S.
            renames = fleet.tracer.host_renames()
            if renames != scanned_at_renames or now >= next_full_scan:
                attach_new_roots(fleet, matcher)
                scanned_at_renames = renames
                next_full_scan = now + FULL_SCAN_S
            next_scan = now + options.scan_interval
        if now >= next_refresh:
            snapshots = fleet.refresh()
            health = tracer_health(
                fleet.core.tracer_stats, fleet.core.events_drained, fleet.tracer.program_fds()
            )
            exporter.update(snapshots, health)
            roots = set(fleet.families)
            for root in sorted(known - roots):
                log(f"family of pid {root} ended")
            known = roots
            next_refresh = now + options.interval
        wait = min(next_scan, next_refresh) - time.monotonic()
        fleet.step(max(0.0, min(0.1, wait)))
