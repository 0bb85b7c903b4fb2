"""Many families, one BPF program: the agent's tracing driver.

The kernel's member table already carries each member's root, and a fork inherits its
parent's root, so one loaded program traces every family at once; user space routes the
lifecycle records and counters by root to one Family each.  Unlike Session (one family, ends
with its root), a Fleet keeps running: families join when their root is found and leave once
every member has exited and outlived the grace period, so memory stays bounded on a node
that runs for months.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

from cowtrace.attribution.engine import AttributionEngine
from cowtrace.attribution.maps import MapWatcher
from cowtrace.attribution.sink import feed_lifecycle
from cowtrace.attribution.view import AttributionView
from cowtrace.family import Family
from cowtrace.host import procfs
from cowtrace.kernel.stacks import KernelStackResolver
from cowtrace.kernel.tracer import KernelTracer, MemberState, TracerConfig
from cowtrace.model import Snapshot
from cowtrace.python.tracker import PythonStacks, python_lifecycle

ADOPTION_ROUNDS = 5  # /proc rescans to catch forks racing with the attach (as Session does)
LOST_FREE_GRACE_S = 5.0  # an exited member whose free record never came is final after this


@dataclass
class Tracked:
    """One family and what the fleet knows about its life."""

    family: Family
    started: float
    last_update: float
    copy_rate: float = 0.0
    forgotten: set[int] = field(default_factory=set)  # pids dropped from the kernel's table


class Fleet:
    """Traces every family it is given with one KernelTracer."""

    def __init__(self, *, ring_bytes: int = 16 << 20, grace_s: float = 300.0) -> None:
        self.tracer = KernelTracer(TracerConfig(ring_bytes=ring_bytes))
        self.maps_watch = MapWatcher(lambda pid: self.tracer.clear_map_changed(pid))
        self.grace_s = grace_s
        self.families: dict[int, Tracked] = {}
        self.events_drained = 0
        self.lost_events = 0
        self._own_pid = os.getpid()
        # One attribution engine for every family (it keys everything by pid): mappings and
        # writer stacks, for the metrics by mapping kind and the exit-time copies.  No
        # allocator probes and no heap walks: an agent stays cheap for the traced servers.
        self.resolver: KernelStackResolver | None = None
        self.engine: AttributionEngine | None = None
        self._view: AttributionView | None = None
        # CPython members: the Python types of the objects on copied pages (no Python stacks
        # in the agent, so no writer category: "other").
        self.python = PythonStacks()

    # ---- set-up ----------------------------------------------------------------------------
    def open(self) -> None:
        self.tracer.open()
        self.resolver = KernelStackResolver(self.tracer.bpf, entries=self.tracer.stack_entries)
        self.engine = AttributionEngine(self.resolver)

    def close(self) -> None:
        self.tracer.close()

    def is_traced(self, pid: int) -> bool:
        """A live member of some family (an exited one's pid may already be reused)."""
        for tracked in self.families.values():
            member = tracked.family.members.get(pid)
            if member is not None and not member.exited:
                return True
        return False

    def add_root(self, stat: procfs.ProcStat) -> bool:
        """Trace `stat` and its descendants as a new family; False if it is already traced.

        The root enters the kernel's table first, so its forks from now on are caught there;
        forks by descendants not yet adopted are caught by rescanning /proc until stable."""
        if self.is_traced(stat.pid):
            return False
        now = time.monotonic()
        family = Family(stat.pid)
        self.tracer.add_member(stat.pid, stat.pid)
        family.adopt(stat, adopted=True)
        self._adopt_attribution(stat.pid, None)
        self.families[stat.pid] = Tracked(family, now, now)
        for _ in range(ADOPTION_ROUNDS):
            found = [
                s
                for s in procfs.descendants(stat.pid)
                if s.pid not in family.members and not self.is_traced(s.pid)
            ]
            if not found:
                break
            for child in found:
                self.tracer.add_member(child.pid, stat.pid)
                family.adopt(child, adopted=True)
                self._adopt_attribution(child.pid, child.ppid)
        return True

    def _adopt_attribution(self, pid: int, parent: int | None) -> None:
        self.python.adopt(pid)
        if self.engine is None or self.resolver is None:
            return
        self.engine.adopt(pid, parent, recover_heap=False)
        self.resolver.note_image(pid)

    # ---- the loop --------------------------------------------------------------------------
    def step(self, timeout_s: float) -> None:
        """Fold in lifecycle records (waiting up to `timeout_s`) and drain detail records."""
        records = self.tracer.poll_proc_records(int(timeout_s * 1000))
        faults = self.tracer.drain_events()  # first: see cowtrace/attribution/sink.py
        records = [*records, *self.tracer.poll_proc_records(0)]
        self.maps_watch.on_records(records)
        for record in records:
            tracked = self.families.get(record.root)
            if tracked is not None:
                tracked.family.apply(record)
            if self.engine is not None:
                feed_lifecycle(record, self.engine, self.resolver)
            python_lifecycle(self.python, record)
        self.events_drained += len(faults)
        self.python.retry_pending()
        if len(faults):
            self.python.on_fault_events(faults)
        if self.engine is not None:
            snapshots, mapped_code = self.maps_watch.read()
            if mapped_code:
                self.resolver.note_code_mapped(mapped_code)
            if snapshots:
                self.engine.on_map_snapshots(snapshots)
            if len(faults):
                self.engine.on_fault_events(faults)

    def refresh(self) -> list[Snapshot]:
        """Read the kernel's counters, retire what is done, and snapshot every family."""
        now = time.monotonic()
        by_root: dict[int, dict[int, MemberState]] = {}
        for pid, state in self.tracer.members().items():
            by_root.setdefault(state.root, {})[pid] = state
        forget: list[int] = []
        for root, tracked in list(self.families.items()):
            states = by_root.get(root, {})
            family = tracked.family
            for pid in states:
                if pid not in family.members:  # its fork record was lost: name it from /proc
                    stat = procfs.read_stat(pid)
                    if stat is not None:
                        family.adopt(stat, adopted=False)
            interval = now - tracked.last_update
            before = family.totals().copied_bytes
            family.update_counts(states, interval)
            if interval > 0:
                tracked.copy_rate = max(0.0, (family.totals().copied_bytes - before) / interval)
            tracked.last_update = now
            for pid, member in family.members.items():
                if pid in tracked.forgotten or pid not in states:
                    continue
                lost_free = (
                    member.exit_time is not None and now - member.exit_time > LOST_FREE_GRACE_S
                )
                if pid in family.final or lost_free:  # counts read above are final
                    forget.append(pid)
                    tracked.forgotten.add(pid)
            self._prune(root, tracked, now)
        for root, states in by_root.items():  # left over from a family already retired
            if root not in self.families:
                forget += [pid for pid, state in states.items() if state.exited]
        self.tracer.forget(forget)
        if self.engine is not None and self.resolver is not None:
            self.resolver.drop_stacks(self.engine.release_stacks())
            self.resolver.sweep_orphans(self.engine.known_stacks().tolist())
        self.lost_events = self.tracer.stats()["lost_events"]
        self._view = self.engine.metrics_view() if self.engine is not None else None
        if self.python.types.active:
            view = self._view or AttributionView()
            self._view = dataclasses.replace(view, **self.python.types.view_fields())
        return [self._snapshot(t, now) for t in self.families.values()]

    def _prune(self, root: int, tracked: Tracked, now: float) -> None:
        """Drop members whose final counts have outlived the grace period (the exporter has
        its own copy until then), and the family once nobody is left."""
        family = tracked.family
        for pid in list(family.members):
            member = family.members[pid]
            if (
                pid in tracked.forgotten
                and member.exit_time is not None
                and now - member.exit_time >= self.grace_s
            ):
                del family.members[pid]
                family.final.discard(pid)
                tracked.forgotten.discard(pid)
                if self.engine is not None:
                    self.engine.forget(pid)  # first: it resolves the pid's writer stacks
                if self.resolver is not None:
                    self.resolver.forget(pid)
                self.python.forget(pid)
        if not family.members:
            del self.families[root]

    def _snapshot(self, tracked: Tracked, now: float) -> Snapshot:
        family = tracked.family
        return Snapshot(
            root_pid=family.root_pid,
            started=tracked.started,
            now=now,
            members=family.ordered(),
            totals=family.totals(),
            lost_events=self.lost_events,
            copy_rate=tracked.copy_rate,
            events_drained=self.events_drained,
            attribution=self._view,  # for every family: the exporter picks each member's pid
        )

    def root_alive(self, root: int) -> bool:
        tracked = self.families.get(root)
        if tracked is None:
            return False
        member = tracked.family.members.get(root)
        return member is not None and not member.exited
