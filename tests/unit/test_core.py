"""The tracing core (cowtrace/core.py) driven by a fake tracer: the drain order of one cycle,
adoption at attach, counts and copy rates, snapshot contents and the tracer's health figures;
and Session (trace/run) built on it with the same fake."""

from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np
import pytest

from cowtrace import core
from cowtrace.core import ADOPTION_ROUNDS, TracingCore, Tracked
from cowtrace.family import Family
from cowtrace.host.memory import PAGE_SIZE
from cowtrace.host.procfs import ProcStat
from cowtrace.kernel.abi import (
    ALLOC_EVENT_DTYPE,
    EVENT_DTYPE,
    PE_EXEC,
    PE_EXIT,
    PE_FORK,
    PE_FREE,
    PE_MAPS,
)
from cowtrace.kernel.tracer import KernelTracer, MemberState, ProcRecord
from cowtrace.model import Counts, Role
from cowtrace.session import Session, SessionOptions, null_sink
from tests.sinks import LoggingSink


class FakeTracer:
    """Satisfies core.Tracer; logs every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.table: dict[int, MemberState] = {}
        self.waiting: list[ProcRecord] = []  # returned by the poll with a timeout
        self.meanwhile: list[ProcRecord] = []  # returned by the poll(0) after the fault drain
        self.faults = np.zeros(0, dtype=EVENT_DTYPE)
        self.allocs = np.zeros(0, dtype=ALLOC_EVENT_DTYPE)
        self.counters = {"lost_events": 0}

    def add_member(self, pid: int, root: int, *, await_exec: bool = False) -> None:
        self.calls.append(("add_member", pid, root, await_exec))
        self.table[pid] = MemberState(pid, root, Counts(), False, -1, 0)

    def set_counts(self, pid: int, counts: Counts) -> None:
        state = self.table[pid]
        self.table[pid] = MemberState(pid, state.root, counts, False, -1, 0)

    def forget(self, pids) -> None:  # noqa: ANN001
        self.calls.append(("forget", list(pids)))
        for pid in pids:
            self.table.pop(pid, None)

    def members(self) -> dict[int, MemberState]:
        return dict(self.table)

    def poll_proc_records(self, timeout_ms: int) -> list[ProcRecord]:
        self.calls.append(("poll", timeout_ms))
        if timeout_ms:
            records, self.waiting = self.waiting, []
        else:
            records, self.meanwhile = self.meanwhile, []
        return records

    def drain_events(self) -> np.ndarray:
        self.calls.append(("drain_events",))
        faults, self.faults = self.faults, np.zeros(0, dtype=EVENT_DTYPE)
        return faults

    def drain_alloc_events(self) -> np.ndarray:
        self.calls.append(("drain_alloc_events",))
        allocs, self.allocs = self.allocs, np.zeros(0, dtype=ALLOC_EVENT_DTYPE)
        return allocs

    def clear_map_changed(self, pid: int) -> None:
        self.calls.append(("clear_map_changed", pid))

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


class FakeSink(LoggingSink):
    """Logs what the core feeds the attribution sink, in order."""

    def on_map_snapshots(self, snapshots) -> None:  # noqa: ANN001
        self.calls.append(("maps", [s.pid for s in snapshots]))

    def on_alloc_events(self, records: np.ndarray) -> None:
        self.calls.append(("allocs", records["pid"].tolist()))

    def allocations_untracked(self, ts_ns: int, pid: int) -> None:
        self.calls.append(("untracked", pid))

    def on_fault_events(self, records: np.ndarray) -> Any:
        self.calls.append(("faults", records["pid"].tolist()))
        return "extra"


class FakeImages:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def note_fork(self, parent: int, child: int) -> None:
        self.calls.append(("fork", parent, child))

    def note_image(self, pid: int) -> None:
        self.calls.append(("image", pid))

    def note_code_mapped(self, pids) -> None:  # noqa: ANN001
        self.calls.append(("code", list(pids)))


class FakeAllocators:
    def __init__(self, given_up: dict[int, float] | None = None, over: list[int] | None = None):
        self.given_up = given_up or {}
        self.over = over or []
        self.calls: list[tuple[Any, ...]] = []

    def cover_process(self, pid: int) -> None:
        self.calls.append(("cover", pid))

    def release(self, pid: int) -> None:
        self.calls.append(("release", pid))

    def note_code_mapped(self, pids: list[int]) -> None:
        self.calls.append(("code", pids))

    def charge(self, records: np.ndarray) -> list[int]:
        self.calls.append(("charge", records["pid"].tolist()))
        return self.over


def record(kind: int, pid: int, ppid: int = 0, root: int = 10, ts_ns: int = 1) -> ProcRecord:
    return ProcRecord(kind, ts_ns, pid, ppid, root, 0, 0, "w")


def stat(pid: int, ppid: int) -> ProcStat:
    return ProcStat(pid, f"p{pid}", "S", ppid, 0, 0)


def faults_of(*pids: int) -> np.ndarray:
    faults = np.zeros(len(pids), dtype=EVENT_DTYPE)
    faults["pid"] = pids
    return faults


def allocs_of(*pids: int) -> np.ndarray:
    allocs = np.zeros(len(pids), dtype=ALLOC_EVENT_DTYPE)
    allocs["pid"] = pids
    return allocs


def make_core(**kwargs: Any) -> tuple[TracingCore, FakeTracer, FakeSink, Family]:
    tracer = FakeTracer()
    family = Family(10)
    tracing = TracingCore(tracer, route=lambda _record: family, **kwargs)
    sink = FakeSink()
    tracing.sink = sink
    return tracing, tracer, sink, family


def test_drain_order_faults_first_then_lifecycle_maps_allocs():
    tracing, tracer, sink, family = make_core()
    hooks: list[tuple[Any, ...]] = []
    tracing.on_record = lambda r: hooks.append(("record", r.type, r.pid))
    tracing.on_faults = lambda f, extra: hooks.append(("faults", f["pid"].tolist(), extra))
    family.adopt(stat(10, 1), adopted=True)
    own = os.getpid()  # a PE_MAPS record of a live process: its /proc/PID/maps is read
    tracer.waiting = [record(PE_FORK, 11, 10, ts_ns=5)]
    tracer.meanwhile = [record(PE_MAPS, own, ts_ns=6)]
    tracer.faults = faults_of(11, 11, 10)
    tracer.allocs = allocs_of(11)

    tracing.step(0.25)

    # The kernel side: the fault ring before the records that came meanwhile; the maps
    # re-armed just before they are read, then the allocator ring.
    assert tracer.calls == [
        ("poll", 250),
        ("drain_events",),
        ("poll", 0),
        ("clear_map_changed", own),
        ("drain_alloc_events",),
    ]
    # The sink: lifecycle, map snapshots, allocator calls, faults.
    assert sink.calls == [
        ("fork", 10, 11),
        ("maps", [own]),
        ("allocs", [11]),
        ("faults", [11, 11, 10]),
    ]
    assert hooks == [
        ("record", PE_FORK, 11),
        ("record", PE_MAPS, own),
        ("faults", [11, 11, 10], "extra"),
    ]
    assert sorted(family.members) == [10, 11]
    assert family.members[11].role == Role.CHILD
    assert tracing.events_drained == 3

    tracer.faults = faults_of(10, 10)
    tracing.step(0)
    assert tracing.events_drained == 5
    assert sink.calls[-1] == ("faults", [10, 10])


def test_empty_cycle_feeds_nothing():
    tracing, tracer, sink, _family = make_core()
    tracing.on_faults = lambda f, extra: pytest.fail("no faults were drained")
    tracing.step(0)
    assert sink.calls == []
    assert tracing.events_drained == 0


def test_records_are_routed_and_unrouted_ones_still_reach_the_sink():
    tracer = FakeTracer()
    families = {10: Family(10), 20: Family(20)}
    tracing = TracingCore(tracer, route=lambda r: families.get(r.root))
    sink = FakeSink()
    tracing.sink = sink
    tracing.apply_lifecycle(
        [
            record(PE_FORK, 11, 10, root=10),
            record(PE_FORK, 21, 20, root=20),
            record(PE_FORK, 31, 30, root=30),
        ]
    )
    assert sorted(families[10].members) == [11]
    assert sorted(families[20].members) == [21]
    assert sink.calls == [("fork", 10, 11), ("fork", 20, 21), ("fork", 30, 31)]


def test_allocator_calls_of_given_up_processes_are_dropped_and_overruns_untracked():
    tracing, tracer, sink, _family = make_core()
    allocators = FakeAllocators(given_up={12: 0.5}, over=[11])
    tracing.allocators = allocators
    tracer.allocs = allocs_of(11, 12, 11, 13)
    tracing.drain([record(PE_EXEC, 11), record(PE_EXIT, 13), record(PE_FREE, 13)])
    assert sink.calls == [("exec", 11), ("exit", 13), ("allocs", [11, 11, 13]), ("untracked", 11)]
    assert allocators.calls == [
        ("cover", 11),
        ("release", 13),
        ("release", 13),
        ("charge", [11, 11, 13]),
    ]


def test_adoption_rescans_proc_until_stable(monkeypatch):
    scans = [[stat(11, 10)], [stat(11, 10), stat(12, 11)], [stat(11, 10), stat(12, 11)]]
    monkeypatch.setattr(core.procfs, "descendants", lambda pid: scans.pop(0))
    tracing, tracer, sink, family = make_core()
    images, allocators = FakeImages(), FakeAllocators()
    tracing.resolver, tracing.allocators = images, allocators
    tracing.recover_heap = True
    adopted: list[tuple[int, bool]] = []
    tracing.on_adopted = lambda pid, await_exec: adopted.append((pid, await_exec))

    tracing.adopt_family(stat(10, 1), family, adopted=True)

    assert scans == []  # three scans: the third found nothing new
    assert tracer.calls == [
        ("add_member", 10, 10, False),
        ("add_member", 11, 10, False),
        ("add_member", 12, 10, False),
    ]
    assert sink.calls == [
        ("adopt", 10, None, True),
        ("adopt", 11, 10, True),
        ("adopt", 12, 11, True),
    ]
    assert images.calls == [("image", 10), ("fork", 10, 11), ("fork", 11, 12)]
    assert allocators.calls == [("cover", 10)]  # the root only
    assert adopted == [(10, False), (11, False), (12, False)]
    assert {pid: m.role for pid, m in family.members.items()} == {
        10: Role.ROOT,
        11: Role.CHILD,
        12: Role.DESCENDANT,
    }
    assert all(m.adopted for m in family.members.values())


def test_adoption_gives_up_after_its_rounds(monkeypatch):
    """A family that forks faster than /proc is scanned: ADOPTION_ROUNDS scans, no more."""
    next_pid = [100]

    def descendants(pid: int) -> list[ProcStat]:
        next_pid[0] += 1
        return [stat(next_pid[0], 10)]

    monkeypatch.setattr(core.procfs, "descendants", descendants)
    tracing, tracer, _sink, family = make_core()
    tracing.adopt_family(stat(10, 1), family, adopted=False)
    assert ADOPTION_ROUNDS == 5
    assert sorted(family.members) == [10, 101, 102, 103, 104, 105]
    assert not family.members[10].adopted and family.members[101].adopted


def test_adoption_skips_taken_pids_and_own_images(monkeypatch):
    """The agent: a descendant another family traces stays there, and each adopted member
    gets its own symbol cache."""
    monkeypatch.setattr(core.procfs, "descendants", lambda pid: [stat(11, 10), stat(12, 10)])
    tracing, tracer, sink, family = make_core(fork_images=False)
    images = FakeImages()
    tracing.resolver = images
    tracing.adopt_family(stat(10, 1), family, adopted=True, taken=lambda pid: pid == 12)
    assert sorted(family.members) == [10, 11]
    assert [c for c in tracer.calls if c[0] == "add_member"] == [
        ("add_member", 10, 10, False),
        ("add_member", 11, 10, False),
    ]
    assert images.calls == [("image", 10), ("image", 11)]


def test_adoption_of_a_held_run_child(monkeypatch):
    """`run`: the child waits for its exec; its image and allocators come with the exec."""
    monkeypatch.setattr(core.procfs, "descendants", lambda pid: [])
    tracing, tracer, sink, family = make_core()
    images, allocators = FakeImages(), FakeAllocators()
    tracing.resolver, tracing.allocators = images, allocators
    adopted: list[tuple[int, bool]] = []
    tracing.on_adopted = lambda pid, await_exec: adopted.append((pid, await_exec))
    tracing.adopt_family(stat(10, 1), family, adopted=False, await_exec=True)
    assert tracer.calls == [("add_member", 10, 10, True)]
    assert sink.calls == [("adopt", 10, None, False)]
    assert images.calls == [] and allocators.calls == []
    assert adopted == [(10, True)]


def test_counts_rates_and_a_lost_fork(monkeypatch):
    monkeypatch.setattr(core.procfs, "descendants", lambda pid: [])
    monkeypatch.setattr(core.procfs, "read_stat", lambda pid: stat(pid, 10))
    tracing, tracer, sink, family = make_core()
    tracing.adopt_family(stat(10, 1), family, adopted=True)
    tracked = Tracked(family, started=100.0, last_update=100.0)

    tracer.set_counts(10, Counts(copies=10, reuses=2))
    tracing.update(tracked, tracer.members(), 102.0)
    assert tracked.copy_rate == 10 * PAGE_SIZE / 2
    assert family.members[10].copy_rate == 10 * PAGE_SIZE / 2
    assert tracked.last_update == 102.0

    # 13's fork record was lost: the kernel has it, the family learns it from /proc.
    tracer.add_member(13, 10)
    tracer.set_counts(13, Counts(copies=4))
    tracer.set_counts(10, Counts(copies=14, reuses=2))
    tracing.update(tracked, tracer.members(), 106.0)
    assert family.members[13].role == Role.CHILD and not family.members[13].adopted
    assert sink.calls[-1] == ("adopt", 13, 10, False)
    assert tracked.copy_rate == 8 * PAGE_SIZE / 4
    assert family.totals() == Counts(copies=18, reuses=2)

    # No time passed: the rate stays what it was.
    tracing.update(tracked, tracer.members(), 106.0)
    assert tracked.copy_rate == 8 * PAGE_SIZE / 4


def test_snapshot_and_health(monkeypatch):
    monkeypatch.setattr(core.procfs, "descendants", lambda pid: [stat(11, 10)])
    tracing, tracer, _sink, family = make_core()
    tracing.allocators = FakeAllocators(given_up={11: 0.4})
    tracing.adopt_family(stat(10, 1), family, adopted=True)
    tracked = Tracked(family, started=50.0, last_update=50.0)
    tracer.set_counts(11, Counts(copies=3, zero_fills=1))
    tracer.faults = faults_of(11, 11, 11, 11)
    tracing.step(0)
    tracer.counters = {"lost_events": 7, "lost_proc_events": 2}
    tracing.update(tracked, tracer.members(), 60.0)

    health = tracing.read_health()
    assert health == {"lost_events": 7, "lost_proc_events": 2, "alloc_probes_removed": 1}
    assert tracing.tracer_stats == health
    assert tracing.lost_events == 7

    snapshot = tracing.snapshot(tracked, 60.0, ended=True, end_reason="root exited")
    assert snapshot.root_pid == 10
    assert (snapshot.started, snapshot.now, snapshot.duration) == (50.0, 60.0, 10.0)
    assert [m.pid for m in snapshot.members] == [10, 11]
    assert snapshot.totals == Counts(copies=3, zero_fills=1)
    assert snapshot.copy_rate == 3 * PAGE_SIZE / 10
    assert snapshot.lost_events == 7
    assert snapshot.events_drained == 4
    assert snapshot.ended and snapshot.end_reason == "root exited"
    assert snapshot.attribution is None and snapshot.cost is None


def test_forget_drops_members_and_their_probes():
    tracing, tracer, _sink, _family = make_core()
    allocators = FakeAllocators()
    tracing.allocators = allocators
    tracing.forget([11, 12])
    assert tracer.calls == [("forget", [11, 12])]
    assert allocators.calls == [("release", 11), ("release", 12)]


def test_session_runs_on_an_injected_tracer(monkeypatch):
    """trace/run's Session on the fake: a root and one worker, the worker exits, the root
    exits; the snapshot and the end are read from the core."""
    monkeypatch.setattr(core.procfs, "descendants", lambda pid: [stat(11, 10)])
    tracer = FakeTracer()
    options = SessionOptions(python_stacks=False, sink_factory=null_sink)
    session = Session(10, options, tracer=tracer)  # type: ignore[arg-type]
    session.attach_root(stat(10, 1), adopted=True)
    assert [c for c in tracer.calls if c[0] == "add_member"] == [
        ("add_member", 10, 10, False),
        ("add_member", 11, 10, False),
    ]
    tracer.set_counts(11, Counts(copies=5))
    tracer.faults = faults_of(11, 11)
    tracer.waiting = [record(PE_EXIT, 11), record(PE_FREE, 11)]
    session.step(0.1)
    snapshot = session.refresh()
    assert tracer.calls[-1] == ("forget", [11])  # final: out of the kernel's table
    assert {m.pid: m.counts.copies for m in snapshot.members} == {10: 0, 11: 5}
    assert [m.pid for m in snapshot.exited] == [11]
    assert snapshot.events_drained == 2 and session.core.events_drained == 2
    assert snapshot.lost_events == 0 and session.core.tracer_stats == {"lost_events": 0}
    assert not session.root_exited()

    tracer.waiting = [record(PE_EXIT, 10), record(PE_FREE, 10)]
    session.step(0.1)
    assert session.root_exited() and session.root_done()


class EndingTracer(FakeTracer):
    """The calls Session makes at its end, besides the core's."""

    bpf = None

    def detach(self) -> None:
        self.calls.append(("detach",))

    def open_episodes(self) -> list[tuple[int, object]]:
        return []

    def program_fds(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self.calls.append(("close",))


def test_session_finish_drains_after_detach_and_reads_final_counts(monkeypatch):
    monkeypatch.setattr(core.procfs, "descendants", lambda pid: [])
    tracer = EndingTracer()
    options = SessionOptions(python_stacks=False, sink_factory=null_sink)
    session = Session(10, options, tracer=tracer)  # type: ignore[arg-type]
    session.attach_root(stat(10, 1), adopted=True)
    tracer.set_counts(10, Counts(copies=9, reuses=1))
    tracer.faults = faults_of(10, 10, 10)
    tracer.meanwhile = [record(PE_EXIT, 10)]
    tracer.calls.clear()
    final = session.finish("interrupted")
    assert tracer.calls[:4] == [("detach",), ("poll", 0), ("drain_events",), ("poll", 0)]
    assert tracer.calls[-1] == ("close",)
    assert final.ended and final.end_reason == "interrupted"
    assert final.totals == Counts(copies=9, reuses=1)
    assert final.events_drained == 3
    assert [m.pid for m in final.exited] == [10]
    assert final.cost is not None


@pytest.mark.parametrize("implementation", [KernelTracer, FakeTracer])
def test_kernel_tracer_and_the_fake_satisfy_the_protocol(implementation):
    """Every call the core makes exists on KernelTracer (and the fake), same parameters."""
    methods = [n for n, v in vars(core.Tracer).items() if inspect.isfunction(v) and n[0] != "_"]
    assert sorted(methods) == [
        "add_member",
        "clear_map_changed",
        "drain_alloc_events",
        "drain_events",
        "forget",
        "members",
        "poll_proc_records",
        "stats",
    ]
    for method in methods:
        expected = inspect.signature(getattr(core.Tracer, method)).parameters
        actual = inspect.signature(getattr(implementation, method)).parameters
        assert list(actual) == list(expected), method
