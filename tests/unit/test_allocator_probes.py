"""AllocatorProbes' bookkeeping (kernel/uprobes.py), against a fake bcc object: probes are
per process, closed when it exits, bounded in number, and given up over their cost budget."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cowtrace.kernel import uprobes
from cowtrace.kernel.abi import (
    ALLOC_EVENT_DTYPE,
    ALLOC_OP_ALLOC,
    ALLOC_OP_FREE,
    ALLOCATOR_GLIBC,
    ALLOCATOR_JEMALLOC,
)
from cowtrace.kernel.uprobes import AllocatorProbes, probe_cost

LIBC = next((p for p in uprobes.SYSTEM_LIBC if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(LIBC is None, reason="no system libc")


class FakeBPF:
    """The bits of bcc's BPF that AllocatorProbes uses: attach adds a perf fd, detach drops it."""

    def __init__(self) -> None:
        self.uprobe_fds: dict[bytes, int] = {}
        self.calls: list[tuple[str, int]] = []

    def attach_uprobe(self, *, name: bytes, addr: int, fn_name: bytes, pid: int) -> None:
        assert pid > 0  # never a probe for every process
        self.uprobe_fds[b"p_%s_0x%x_%d" % (name, addr, pid)] = 1
        self.calls.append((fn_name.decode(), pid))

    def attach_uretprobe(self, *, name: bytes, addr: int, fn_name: bytes, pid: int) -> None:
        assert pid > 0
        self.uprobe_fds[b"r_%s_0x%x_%d" % (name, addr, pid)] = 1

    def detach_uprobe_event(self, ev_name: bytes) -> None:
        del self.uprobe_fds[ev_name]


def records(rows: list[tuple[int, int, int]]) -> np.ndarray:
    """(pid, op, allocator) rows as ALLOC_EVENT_DTYPE records."""
    out = np.zeros(len(rows), ALLOC_EVENT_DTYPE)
    for index, (pid, op, allocator) in enumerate(rows):
        out[index]["pid"], out[index]["op"], out[index]["allocator"] = pid, op, allocator
    return out


def test_probes_are_per_process_and_closed_at_exit() -> None:
    bpf = FakeBPF()
    probes = AllocatorProbes(bpf)
    probes.probe(100, LIBC, ALLOCATOR_GLIBC)
    probes.probe(100, LIBC, ALLOCATOR_GLIBC)  # once per process and file
    one = probes.probe_events(100)
    assert one == len(bpf.uprobe_fds) >= 2 * 5  # entry + return per allocating function
    probes.probe(200, LIBC, ALLOCATOR_GLIBC)
    assert probes.processes == {100, 200}
    assert probes.probe_events(200) == one
    assert {pid for _, pid in bpf.calls} == {100, 200}
    probes.release(100)
    assert probes.processes == {200}
    probes.wait()  # closes run in the background
    assert len(bpf.uprobe_fds) == one
    probes.release(200)
    probes.release(200)  # twice: nothing left, no error
    probes.wait()
    assert not bpf.uprobe_fds and not probes.processes
    assert [o.path for o in probes.objects] == [LIBC]  # read once


def test_code_mapped_re_covers_probed_processes_only(monkeypatch) -> None:
    probes = AllocatorProbes(FakeBPF())
    covered: list[int] = []
    monkeypatch.setattr(probes, "cover_process", covered.append)
    probes.probe(100, LIBC, ALLOCATOR_GLIBC)
    probes.note_code_mapped([100, 101, 102])  # 101, 102: forked workers, never probed
    assert covered == [100]


def test_probed_processes_are_bounded() -> None:
    bpf = FakeBPF()
    probes = AllocatorProbes(bpf, max_processes=2)
    for pid in (1, 2, 3):
        probes.cover_program(pid, "/bin/sh", environ={})
    assert probes.processes == {1, 2}
    assert len(probes.errors) == 1 and "pid 3" in probes.errors[0]


def test_cost_estimate_per_call() -> None:
    cost = probe_cost(
        records(
            [
                (1, ALLOC_OP_ALLOC, ALLOCATOR_GLIBC),
                (1, ALLOC_OP_FREE, ALLOCATOR_GLIBC),
                (2, ALLOC_OP_FREE, ALLOCATOR_JEMALLOC),
            ]
        )
    )
    assert cost[1] == pytest.approx(uprobes.ALLOC_COST_S + uprobes.FREE_COST_S)
    assert cost[2] == pytest.approx(uprobes.STEPPED_FREE_COST_S)


def test_a_process_over_budget_loses_its_probes_for_good() -> None:
    """A burst (a preload, a fixture's few thousand calls) stays; calls that keep costing
    more than BUDGET_FRACTION of the window (a server serving requests) do not."""
    bpf = FakeBPF()
    probes = AllocatorProbes(bpf)
    probes.probe(100, LIBC, ALLOCATOR_GLIBC)
    probes.probe(200, LIBC, ALLOCATOR_GLIBC)
    window_calls = int(uprobes.BUDGET_FRACTION * uprobes.BUDGET_WINDOW_S / uprobes.ALLOC_COST_S)
    burst = records([(100, ALLOC_OP_ALLOC, ALLOCATOR_GLIBC)] * (window_calls // 2 + 1))
    assert probes.charge(burst, now=10.0) == []
    # the same again a window later: the first burst has left the window
    assert probes.charge(burst, now=10.0 + uprobes.BUDGET_WINDOW_S) == []
    assert probes.charge(burst, now=10.1 + uprobes.BUDGET_WINDOW_S) == [100]
    assert probes.processes == {200}
    assert probes.given_up[100] > uprobes.BUDGET_FRACTION
    probes.cover_process(100)  # an exec later: not probed again
    assert probes.processes == {200}
    assert probes.charge(burst, now=20.0) == []  # records in flight: not charged twice
    probes.wait()
    assert len(bpf.uprobe_fds) == probes.probe_events(200)


def test_the_dearest_probes_close_first() -> None:
    """A breakpoint leaves the process when its close starts, and closes are slow (an RCU
    grace period each): free's probe (single-stepped in jemalloc) goes first, then malloc's."""
    bpf = FakeBPF()
    closed: list[bytes] = []
    detach = bpf.detach_uprobe_event

    def record(ev_name: bytes) -> None:
        closed.append(ev_name)
        detach(ev_name)

    bpf.detach_uprobe_event = record  # type: ignore[method-assign]
    probes = AllocatorProbes(bpf)
    probes.probe(100, LIBC, ALLOCATOR_GLIBC)
    (found,) = probes.objects
    addr = dict(zip(found.functions, found.addresses, strict=True))
    offset = dict(zip(found.functions, found.offsets, strict=True))
    probes.release(100)
    probes.wait()
    first = [int(ev.split(b"_0x")[1].split(b"_")[0], 16) for ev in closed[:3]]
    assert first == [
        addr["free"] + offset["free"],
        addr["malloc"] + offset["malloc"],
        addr["malloc"] + offset["malloc"],
    ]
    assert len(closed) == one_object_events(found)


def one_object_events(found) -> int:
    return 2 * len(found.functions) - 1  # entry and return each, free's entry alone
