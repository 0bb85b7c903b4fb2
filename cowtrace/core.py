"""The tracing core: one loaded tracer's loop, shared by trace/run (session.py) and the agent
(agent/fleet.py).

What every user of the kernel tracer does the same way lives here once: adopting a root and
its existing descendants, the drain order of one cycle, the families' counters and copy
rates, their Snapshots and the tracer's health figures.  What differs stays with the user:
one family or many (`route`), discovery, retirement, the event log and Python stacks (hooks).

The tracer is passed in (`Tracer`, the calls the loop makes on kernel/tracer.py's
KernelTracer), so tests drive the core with a fake one (tests/unit/test_core.py).

Drain order of one cycle (attribution/sink.py says why): the fault ring FIRST, then the
lifecycle records that came meanwhile, then the maps that changed, then the allocator calls;
the sink is fed lifecycle, map snapshots, allocator calls, faults.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cowtrace.attribution.maps import MapWatcher
from cowtrace.attribution.sink import AttributionSink, NullSink, feed_lifecycle
from cowtrace.family import Family
from cowtrace.host import procfs
from cowtrace.kernel.abi import PE_EXEC, PE_EXIT, PE_FREE
from cowtrace.kernel.tracer import MemberState, ProcRecord
from cowtrace.model import Snapshot

ADOPTION_ROUNDS = 5  # /proc rescans to catch forks racing with the attach


class Tracer(Protocol):
    """Exactly what the core calls on the loaded program (kernel/tracer.py KernelTracer)."""

    def add_member(self, pid: int, root: int, *, await_exec: bool = False) -> None:
        """Put `pid` in the kernel's member table under `root`."""
        ...

    def forget(self, pids: Iterable[int]) -> None:
        """Drop members whose counts are final from the kernel's table."""
        ...

    def members(self) -> dict[int, MemberState]:
        """Every member's counters and flags, read now."""
        ...

    def poll_proc_records(self, timeout_ms: int) -> list[ProcRecord]:
        """Lifecycle records (fork, exec, exit, free, maps changed), waiting up to the
        timeout for the first one."""
        ...

    def drain_events(self) -> np.ndarray:
        """Classified faults (EVENT_DTYPE) since the last drain."""
        ...

    def drain_alloc_events(self) -> np.ndarray:
        """Allocator calls (ALLOC_EVENT_DTYPE) since the last drain; empty without probes."""
        ...

    def clear_map_changed(self, pid: int) -> None:
        """Re-arm `pid`'s map-change record, just before its map is read."""
        ...

    def stats(self) -> dict[str, int]:
        """The program's own counters: "lost_events" and the other health figures."""
        ...


class Images(Protocol):
    """What the core tells the stack resolver (kernel/stacks.py KernelStackResolver)."""

    def note_fork(self, parent: int, child: int) -> None: ...

    def note_image(self, pid: int) -> None: ...

    def note_code_mapped(self, pids: Iterable[int]) -> None: ...


class Allocators(Protocol):
    """What the core asks of the allocator probes (kernel/uprobes.py AllocatorProbes)."""

    given_up: dict[int, float]

    def cover_process(self, pid: int) -> None: ...

    def release(self, pid: int) -> None: ...

    def note_code_mapped(self, pids: list[int]) -> None: ...

    def charge(self, records: np.ndarray) -> list[int]: ...


@dataclass
class Tracked:
    """One family and its clock: when tracing began, the last count update, the copy rate."""

    family: Family
    started: float
    last_update: float
    copy_rate: float = 0.0  # copied bytes per second over the last interval


def _no_family(_record: ProcRecord) -> Family | None:
    return None


class TracingCore:
    """The loop around one tracer: adoption, drain, counts and rates, snapshots, health.

    Optional parts are attributes the user sets once the program is loaded: `sink` (the
    attribution engine), `resolver` (stack resolver), `allocators` (allocator probes).  Hooks
    let the user add its own work at fixed points of the cycle: `on_record` after each
    lifecycle record was applied, `on_faults` after the sink took a batch of faults,
    `on_adopted` after a member was adopted from /proc at attach."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        route: Callable[[ProcRecord], Family | None] = _no_family,
        fork_images: bool = True,
    ) -> None:
        self.tracer = tracer
        self.route = route  # the family a lifecycle record belongs to (None: no family)
        # An adopted descendant shares its parent's program image (trace/run), or has its
        # symbol cache made of its own (the agent).
        self.fork_images = fork_images
        self.maps_watch = MapWatcher(self._rearm)
        self.sink: AttributionSink = NullSink()
        self.resolver: Images | None = None
        self.allocators: Allocators | None = None
        self.recover_heap = False  # attach mode: adopted members' heaps predate tracing
        self.on_record: Callable[[ProcRecord], None] | None = None
        self.on_faults: Callable[[np.ndarray, Any], None] | None = None
        self.on_adopted: Callable[[int, bool], None] | None = None
        self.events_drained = 0  # detail records drained from the ring (tracer health)
        self.lost_events = 0
        self.tracer_stats: dict[str, int] = {}

    def _rearm(self, pid: int) -> None:
        self.tracer.clear_map_changed(pid)

    # ---- adoption --------------------------------------------------------------------------
    def adopt_family(
        self,
        stat: procfs.ProcStat,
        family: Family,
        *,
        adopted: bool,
        await_exec: bool = False,
        taken: Callable[[int], bool] | None = None,
    ) -> None:
        """Make `stat` a root, then adopt its existing descendants (none `taken` already).

        The root goes into the kernel's table first, so its forks from now on are caught there;
        forks by descendants not yet adopted are caught by rescanning /proc until it is stable.
        A held `run` child (`await_exec`) is still cowtrace: its program image comes with its
        exec record."""
        self.tracer.add_member(stat.pid, stat.pid, await_exec=await_exec)
        family.adopt(stat, adopted=adopted)
        self.adopt_member(family, stat.pid, None, image=not await_exec)
        if self.on_adopted is not None:
            self.on_adopted(stat.pid, await_exec)
        for _ in range(ADOPTION_ROUNDS):
            found = [
                s
                for s in procfs.descendants(stat.pid)
                if s.pid not in family.members and not (taken is not None and taken(s.pid))
            ]
            if not found:
                break
            for child in found:
                self.tracer.add_member(child.pid, stat.pid)
                family.adopt(child, adopted=True)
                self.adopt_member(family, child.pid, child.ppid)
                if self.on_adopted is not None:
                    self.on_adopted(child.pid, False)

    def adopt_member(
        self, family: Family, pid: int, parent: int | None, *, image: bool = True
    ) -> None:
        """Attribution of a member that existed before tracing (or whose fork record was
        lost): the sink reads its map; the resolver learns its program image; a root's
        allocators are probed (kernel/uprobes.py)."""
        self.sink.adopt(pid, parent, recover_heap=self.recover_heap)
        if not image:
            return
        if self.resolver is not None:
            if self.fork_images and parent is not None and parent in family.members:
                self.resolver.note_fork(parent, pid)
            else:
                self.resolver.note_image(pid)
        if self.allocators is not None and parent is None:
            self.allocators.cover_process(pid)

    # ---- the drain cycle -------------------------------------------------------------------
    def step(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for lifecycle records, then drain everything pending."""
        self.drain(self.tracer.poll_proc_records(int(timeout_s * 1000)))

    def drain(self, lifecycle: list[ProcRecord] | None = None) -> None:
        """One cycle, in the order of the module's docstring."""
        faults = self.tracer.drain_events()
        self.apply_lifecycle([*(lifecycle or []), *self.tracer.poll_proc_records(0)])
        snapshots, mapped_code = self.maps_watch.read()  # after the faults: see sink.py
        allocs = self.tracer.drain_alloc_events()
        if mapped_code:
            if self.resolver is not None:
                self.resolver.note_code_mapped(mapped_code)
            if self.allocators is not None:  # an allocator a process dlopen()ed just now
                self.allocators.note_code_mapped(mapped_code)
        if snapshots:
            self.sink.on_map_snapshots(snapshots)
        if len(allocs) and self.allocators is not None and self.allocators.given_up:
            # calls made while a given-up process' probes were being closed: its table is
            # unknown from the moment it was given up
            allocs = allocs[~np.isin(allocs["pid"], list(self.allocators.given_up))]
        if len(allocs):
            self.sink.on_alloc_events(allocs)
            if self.allocators is not None:
                for pid in self.allocators.charge(allocs):
                    self.sink.allocations_untracked(time.monotonic_ns(), pid)
        self.feed_faults(faults)

    def apply_lifecycle(self, records: list[ProcRecord]) -> None:
        """Fold lifecycle records into the families, the sink and the probes."""
        self.maps_watch.on_records(records)
        for record in records:
            family = self.route(record)
            if family is not None:
                family.apply(record)
            # The stack resolver first: at an exec it makes the new image's symbol cache, which
            # only a live process can give, and a short program may be done within
            # milliseconds.  The user's hook (Python detection) can wait for the loader, and
            # the allocator probes read ELF files: both come after.
            feed_lifecycle(record, self.sink, self.resolver)
            if self.on_record is not None:
                self.on_record(record)
            if self.allocators is not None:
                if record.type == PE_EXEC:  # a new program: probed as a root would be
                    self.allocators.cover_process(record.pid)
                elif record.type in (PE_EXIT, PE_FREE):
                    self.allocators.release(record.pid)

    def feed_faults(self, faults: np.ndarray) -> None:
        """Classified faults to the sink (and the user's hook: event log, Python stacks)."""
        if not len(faults):
            return
        self.events_drained += len(faults)
        extra: Any = self.sink.on_fault_events(faults)
        if self.on_faults is not None:
            self.on_faults(faults, extra)

    # ---- counts, rates, snapshots, health --------------------------------------------------
    def update(self, tracked: Tracked, states: dict[int, MemberState], now: float) -> None:
        """Fold the kernel's counters of one family in, and its copy rate since the last
        update.  A member the kernel has but the family lacks lost its fork record: it is
        named from /proc."""
        family = tracked.family
        for pid in states:
            if pid not in family.members:
                stat = procfs.read_stat(pid)
                if stat is not None:
                    family.adopt(stat, adopted=False)
                    self.adopt_member(family, pid, stat.ppid)
        interval = now - tracked.last_update
        before = family.totals().copied_bytes
        family.update_counts(states, interval)
        if interval > 0:
            tracked.copy_rate = max(0.0, (family.totals().copied_bytes - before) / interval)
        tracked.last_update = now

    def forget(self, pids: list[int]) -> None:
        """Members whose counts are final leave the kernel's table (and their probes go, in
        case their exit record was lost)."""
        self.tracer.forget(pids)
        if self.allocators is not None:
            for pid in pids:
                self.allocators.release(pid)

    def read_health(self) -> dict[str, int]:
        """The tracer's counters (lost records, table overflows), read now."""
        self.tracer_stats = self.tracer.stats()
        if self.allocators is not None:  # over their budget: tables unknown from then on
            self.tracer_stats["alloc_probes_removed"] = len(self.allocators.given_up)
        self.lost_events = self.tracer_stats["lost_events"]
        return self.tracer_stats

    def snapshot(self, tracked: Tracked, now: float, **extra: Any) -> Snapshot:
        """One family's Snapshot; `extra`: the user's fields (attribution, end, cost)."""
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
            **extra,
        )
