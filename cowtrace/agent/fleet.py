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
from cowtrace.core import TracingCore, Tracked
from cowtrace.family import Family
from cowtrace.host import procfs
from cowtrace.kernel.stacks import KernelStackResolver
from cowtrace.kernel.tracer import KernelTracer, MemberState, ProcRecord, TracerConfig
from cowtrace.model import Snapshot
from cowtrace.python.budget import DEFAULT_SHARE, TypesBudget
from cowtrace.python.tracker import PythonStacks, python_lifecycle
from cowtrace.results import AttributionView

LOST_FREE_GRACE_S = 5.0  # an exited member whose free record never came is final after this


@dataclass
class FleetFamily(Tracked):
    """One family and what the fleet knows about its life."""

    forgotten: set[int] = field(default_factory=set)  # pids dropped from the kernel's table


class Fleet:
    """Traces every family it is given with one tracer: a TracingCore (cowtrace/core.py)
    whose lifecycle records are routed by root, and the families' retirement."""

    def __init__(
        self,
        *,
        ring_bytes: int = 16 << 20,
        grace_s: float = 300.0,
        tracer: KernelTracer | None = None,
        python_types_budget: float | None = DEFAULT_SHARE,
    ) -> None:
        self.tracer = tracer or KernelTracer(TracerConfig(ring_bytes=ring_bytes))
        # An adopted worker gets a symbol cache of its own (it may have exec'd something else).
        self.core = TracingCore(self.tracer, route=self._family_of, fork_images=False)
        self.grace_s = grace_s
        self.families: dict[int, FleetFamily] = {}
        self._own_pid = os.getpid()
        # One attribution engine for every family (it keys everything by pid): mappings and
        # writer stacks, for the metrics by mapping kind and the exit-time copies.  No
        # allocator probes and no heap walks: an agent stays cheap for the traced servers.
        self.resolver: KernelStackResolver | None = None
        self.engine: AttributionEngine | None = None
        self._view: AttributionView | None = None
        # CPython members: the Python types of the objects on copied pages (no Python stacks
        # in the agent, so no writer category: "other"), within their time budget, so that
        # a starved agent still reads exits and forgets members in time (python/budget.py).
        self.python = PythonStacks(TypesBudget(python_types_budget))
        self.core.on_adopted = lambda pid, _await_exec: self.python.adopt(pid)
        self.core.on_record = lambda record: python_lifecycle(self.python, record)
        self.core.on_faults = lambda faults, _extra: self.python.on_fault_events(faults)

    # ---- set-up ----------------------------------------------------------------------------
    def open(self) -> None:
        self.tracer.open()
        self.resolver = KernelStackResolver(self.tracer.bpf, entries=self.tracer.stack_entries)
        self.engine = AttributionEngine(self.resolver)
        self.core.resolver = self.resolver
        self.core.sink = self.engine

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
        Descendants another family traces already stay there (core.adopt_family)."""
        if self.is_traced(stat.pid):
            return False
        now = time.monotonic()
        tracked = FleetFamily(Family(stat.pid), now, now)
        self.families[stat.pid] = tracked
        self.core.adopt_family(stat, tracked.family, adopted=True, taken=self.is_traced)
        return True

    def _family_of(self, record: ProcRecord) -> Family | None:
        tracked = self.families.get(record.root)
        return tracked.family if tracked is not None else None

    # ---- the loop --------------------------------------------------------------------------
    def step(self, timeout_s: float) -> None:
        """Fold in lifecycle records (waiting up to `timeout_s`) and drain detail records."""
        records = self.tracer.poll_proc_records(int(timeout_s * 1000))
        self.python.retry_pending()
        self.core.drain(records)

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
            self.core.update(tracked, states, now)
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
        self.core.forget(forget)
        if self.engine is not None and self.resolver is not None:
            self.resolver.drop_stacks(self.engine.release_stacks())
            self.resolver.sweep_orphans(self.engine.known_stacks().tolist())
        self.core.read_health()
        self._view = self.engine.metrics_view() if self.engine is not None else None
        if self.python.types.active:
            view = self._view or AttributionView()
            self._view = dataclasses.replace(view, **self.python.types.view_fields())
        # for every family: the exporter picks each member's pid
        return [self.core.snapshot(t, now, attribution=self._view) for t in self.families.values()]

    def _prune(self, root: int, tracked: FleetFamily, now: float) -> None:
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

    def root_alive(self, root: int) -> bool:
        tracked = self.families.get(root)
        if tracked is None:
            return False
        member = tracked.family.members.get(root)
        return member is not None and not member.exited
