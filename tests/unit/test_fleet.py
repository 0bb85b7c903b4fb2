"""The agent's multi-family driver with a fake kernel tracer: records and counters are routed
by root, final members leave the kernel's table, and families leave after the grace period."""

from __future__ import annotations

import numpy as np

from cowtrace.agent.fleet import Fleet
from cowtrace.host.procfs import ProcStat
from cowtrace.kernel.abi import ALLOC_EVENT_DTYPE, PE_EXIT, PE_FORK, PE_FREE
from cowtrace.kernel.ringbuf import EVENT_DTYPE
from cowtrace.kernel.tracer import MemberState, ProcRecord
from cowtrace.model import Counts


class FakeTracer:
    def __init__(self) -> None:
        self.table: dict[int, MemberState] = {}
        self.records: list[ProcRecord] = []
        self.forgotten: list[int] = []

    def add_member(self, pid: int, root: int, *, await_exec: bool = False) -> None:
        self.table[pid] = MemberState(pid, root, Counts(), False, -1, 0)

    def set_counts(self, pid: int, copies: int) -> None:
        state = self.table[pid]
        self.table[pid] = MemberState(pid, state.root, Counts(copies=copies), False, -1, 0)

    def members(self) -> dict[int, MemberState]:
        return dict(self.table)

    def forget(self, pids) -> None:  # noqa: ANN001
        for pid in pids:
            self.table.pop(pid, None)
            self.forgotten.append(pid)

    def poll_proc_records(self, timeout_ms: int) -> list[ProcRecord]:
        records, self.records = self.records, []
        return records

    def drain_events(self) -> np.ndarray:
        return np.zeros(3, dtype=EVENT_DTYPE)

    def drain_alloc_events(self) -> np.ndarray:
        return np.empty(0, dtype=ALLOC_EVENT_DTYPE)

    def clear_map_changed(self, pid: int) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {"lost_events": 0}


def record(kind: int, pid: int, ppid: int, root: int, ts: float) -> ProcRecord:
    return ProcRecord(kind, int(ts * 1e9), pid, ppid, root, 0, 0, "w")


def test_families_are_routed_by_root_and_retire(monkeypatch):
    monkeypatch.setattr("cowtrace.agent.fleet.procfs.descendants", lambda pid: [])
    clock = [1000.0]
    monkeypatch.setattr("cowtrace.agent.fleet.time.monotonic", lambda: clock[0])
    fake = FakeTracer()
    fleet = Fleet(grace_s=10, tracer=fake)
    for root in (10, 20):
        assert fleet.add_root(ProcStat(root, f"m{root}", "S", 1, 0, 0))
    assert not fleet.add_root(ProcStat(10, "m10", "S", 1, 0, 0))

    # Root 10 forks 11 (the kernel puts it in the table under root 10).
    fake.add_member(11, 10)
    fake.set_counts(11, 7)
    fake.set_counts(20, 3)
    fake.records = [record(PE_FORK, 11, 10, 10, 1000.0)]
    fleet.step(0)
    assert fleet.core.events_drained == 3
    snapshots = {s.root_pid: s for s in fleet.refresh()}
    assert {m.pid: m.counts.copies for m in snapshots[10].members} == {10: 0, 11: 7}
    assert {m.pid: m.counts.copies for m in snapshots[20].members} == {20: 3}
    assert fleet.is_traced(11)

    # Family 10 ends: its members leave the kernel's table when final, and the family
    # leaves the fleet once the grace period has passed.
    fake.records = [
        record(kind, pid, 0, 10, 1001.0) for pid in (11, 10) for kind in (PE_EXIT, PE_FREE)
    ]
    clock[0] = 1002.0
    fleet.step(0)
    snapshots = {s.root_pid: s for s in fleet.refresh()}
    assert sorted(fake.forgotten) == [10, 11]
    assert len(snapshots[10].exited) == 2
    assert not fleet.is_traced(11)
    clock[0] = 1011.5
    assert {s.root_pid for s in fleet.refresh()} == {20}
    assert 20 in fleet.families and 10 not in fleet.families
