"""The records attribution is built on, against a fixture whose answer is known: allocator
calls (sizes, addresses, allocating function in the stack), copies (writing function in the
writer stack), map snapshots re-read after changes, and the allocator uprobes gone afterwards.

`alloc_writes` (tests/fixtures/alloc_writes.c) is run in-process under `cowtrace run`'s code
with a sink that keeps every record it is given, as the attribution engine would get them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cowtrace.attribution.maps import MapSnapshot
from cowtrace.commands.common import OutputOptions
from cowtrace.commands.run import run
from cowtrace.kernel.abi import (
    ALLOC_EVENT_DTYPE,
    ALLOC_OP_ALLOC,
    ALLOC_OP_FREE,
    ALLOC_OP_REALLOC,
    ALLOCATOR_GLIBC,
    ALLOCATOR_JEMALLOC,
    EVENT_DTYPE,
    KIND_COPY,
)
from cowtrace.session import SessionOptions
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import run_cowtrace, wait_until_unloaded

build = load_build()


class RecordingSink:
    """An AttributionSink that keeps everything, in the order the session calls it."""

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver
        self.calls: list[tuple] = []
        self.maps: list[MapSnapshot] = []
        self.allocs: list[np.ndarray] = [np.empty(0, ALLOC_EVENT_DTYPE)]
        self.faults: list[np.ndarray] = [np.empty(0, EVENT_DTYPE)]

    def adopt(self, pid: int, parent: int | None, *, recover_heap: bool) -> None:
        self.calls.append(("adopt", pid, parent, recover_heap))

    def on_fork(self, ts_ns: int, parent: int, child: int) -> None:
        self.calls.append(("fork", parent, child))

    def on_exec(self, ts_ns: int, pid: int) -> None:
        self.calls.append(("exec", pid))

    def on_exit(self, ts_ns: int, pid: int) -> None:
        self.calls.append(("exit", pid))

    def on_map_snapshots(self, snapshots: list[MapSnapshot]) -> None:
        self.calls.append(("maps", len(snapshots)))
        self.maps.extend(snapshots)

    def on_alloc_events(self, records: np.ndarray) -> None:
        self.calls.append(("allocs", len(records)))
        self.allocs.append(records)

    def on_fault_events(self, records: np.ndarray) -> Any:
        self.calls.append(("faults", len(records)))
        self.faults.append(records)
        return None

    def view(self, *, final: bool = False) -> None:
        return None

    # ---- for the assertions ----------------------------------------------------------------
    def stack(self, pid: int, stack_id: int) -> list[str]:
        return [self.resolver.symbolize(pid, a) for a in self.resolver.addresses(stack_id)]


def trace_fixture(binary: Path, args: list[str], out: Path, *, via_shell: bool):
    """Run a fixture under `run`'s code with a RecordingSink; its stdout goes to `out`.

    via_shell: through `sh -c 'exec ...'`, so the fixture's allocator is found at its exec
    record (the catch-up path); otherwise the command itself is the fixture (found before it
    is released)."""
    sinks: list[RecordingSink] = []

    def factory(resolver: Any, _options: SessionOptions) -> RecordingSink:
        sinks.append(RecordingSink(resolver))
        return sinks[-1]

    options = SessionOptions(malloc=True, sink_factory=factory)
    if via_shell:
        argv = ["/bin/sh", "-c", 'out=$1; shift; exec "$@" > "$out"', "sh", str(out)]
        status = run([*argv, str(binary), *args], OutputOptions(quiet=True), options)
    else:
        saved = os.dup(1)
        try:
            with open(out, "w") as target:
                os.dup2(target.fileno(), 1)
            status = run([str(binary), *args], OutputOptions(quiet=True), options)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    assert status == 0
    facts = build.parse_lines(out.read_text())
    sink = sinks[0]
    return (
        facts,
        sink,
        sink.maps,
        np.concatenate(sink.allocs),
        np.concatenate(sink.faults),
    )


@pytest.fixture(scope="module")
def traced(fixture_binaries, tmp_path_factory):
    """alloc_writes 64 MiB + 4000 small blocks under `run` (malloc probes on by default)."""
    out = tmp_path_factory.mktemp("alloc_writes") / "out.jsonl"
    return trace_fixture(fixture_binaries("alloc_writes"), ["64", "4000"], out, via_shell=True)


def _other(facts, key: str) -> list[dict]:
    return [line[key] for line in facts.other if key in line]


def check_allocations(facts, sink: RecordingSink, allocs: np.ndarray, allocator: int) -> None:
    """Every allocator call the fixture reports is there once, exact, with its function."""
    parent = facts.pid_of("parent")
    mine = allocs[allocs["pid"] == parent]
    for expected in _other(facts, "alloc"):
        rows = mine[(mine["addr"] == expected["addr"]) & (mine["op"] == expected["op"])]
        rows = rows[rows["size"] == expected["size"]]
        assert len(rows) == 1, expected
        row = rows[0]
        assert row["allocator"] == allocator
        assert sink.resolver.symbolize(parent, int(row["caller"])).startswith(
            f"{expected['function']} ("
        )
        if expected["op"] == ALLOC_OP_REALLOC:
            assert row["old_addr"] == expected["old_addr"]
        if expected["op"] != ALLOC_OP_FREE:
            frames = sink.stack(parent, int(row["stack_id"]))
            assert frames and frames[0].startswith(f"{expected['function']} ("), frames
            assert any(f.startswith("main (") for f in frames), frames
    small = _other(facts, "small_blocks")[0]
    blocks = mine[(mine["op"] == ALLOC_OP_ALLOC) & (mine["size"] == small["size"])]
    in_range = blocks[(blocks["addr"] >= small["first"]) & (blocks["addr"] <= small["last"])]
    assert len(in_range) == small["count"]
    assert in_range["addr"].min() == small["first"]
    assert in_range["addr"].max() == small["last"]
    stacks = {int(s) for s in in_range["stack_id"]}
    assert -1 not in stacks
    for stack_id in stacks:
        assert sink.stack(parent, stack_id)[0].startswith("make_small (")


def test_allocations_have_exact_sizes_and_allocating_functions(traced):
    facts, sink, _maps, allocs, _faults = traced
    check_allocations(facts, sink, allocs, ALLOCATOR_GLIBC)


def test_jemalloc_is_found_and_probed(fixture_binaries, tmp_path):
    """The fixture linked against libjemalloc.so.2 (as Debian's redis-server is)."""
    binary = fixture_binaries("alloc_writes_jemalloc")
    facts, sink, _maps, allocs, _faults = trace_fixture(
        binary, ["8", "500"], tmp_path / "out.jsonl", via_shell=False
    )
    check_allocations(facts, sink, allocs, ALLOCATOR_JEMALLOC)


def test_an_allocator_loaded_with_dlopen_is_probed(fixture_binaries, tmp_path):
    """libjemalloc.so.2 dlopen()ed after start: probed once its code is mapped, every call
    of the fixture's after that recorded exactly, as jemalloc's, with the calling function."""
    binary = fixture_binaries("alloc_dlopen")
    facts, sink, _maps, allocs, _faults = trace_fixture(
        binary, ["20", "1500"], tmp_path / "out.jsonl", via_shell=False
    )
    parent = facts.pid_of("parent")
    mine = allocs[(allocs["pid"] == parent) & (allocs["allocator"] == ALLOCATOR_JEMALLOC)]
    expected = _other(facts, "alloc")
    assert len(expected) == 21
    for call in expected:
        rows = mine[(mine["addr"] == call["addr"]) & (mine["op"] == call["op"])]
        rows = rows[rows["size"] == call["size"]]
        assert len(rows) == 1, call
        caller = sink.resolver.symbolize(parent, int(rows[0]["caller"]))
        assert caller.startswith("make_blocks ("), caller
        if call["op"] == ALLOC_OP_ALLOC:
            frames = sink.stack(parent, int(rows[0]["stack_id"]))
            assert frames and frames[0].startswith("make_blocks ("), frames


def test_copies_carry_the_writing_function(traced):
    facts, sink, _maps, _allocs, faults = traced
    child = facts.pid_of("child")
    copies = faults[(faults["pid"] == child) & (faults["kind"] == KIND_COPY)]
    for name, writer in (("big", "write_big"), ("small", "write_small")):
        buffer = facts.buffers[name]
        expect = next(e for e in facts.expects if e.pid == child and e.buffer == name)
        inside = copies[(copies["addr"] >= buffer.start) & (copies["addr"] < buffer.end)]
        assert len(inside) == expect.copies, name
        ids = inside["stack_id"]
        assert (ids >= 0).all(), f"{name}: {(ids < 0).sum()} copies without a stack"
        for stack_id in {int(s) for s in ids}:
            frames = sink.stack(child, stack_id)
            assert frames[0].startswith(f"{writer} ("), frames
            assert frames[0].endswith("(alloc_writes)"), frames


def test_changed_maps_are_read_again(traced):
    """The parent's map changes (malloc's mmap of the big block, the brk heap of the small ones,
    change_maps' mmap, mprotect, munmap and brk up and down) are seen as /proc snapshots: taken
    after the exec, in time order, and the last one is the map as it ended up."""
    facts, sink, maps, _allocs, _faults = traced
    parent = facts.pid_of("parent")
    mine = [snapshot for snapshot in maps if snapshot.pid == parent]
    assert mine
    exec_at = next(i for i, call in enumerate(sink.calls) if call == ("exec", parent))
    first_maps = next(i for i, call in enumerate(sink.calls) if call[0] == "maps")
    assert first_maps > exec_at
    stamps = [snapshot.ts_ns for snapshot in mine]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    last = mine[-1].intervals

    def holding(addr: int) -> list:
        return [i for i in last if i.start <= addr < i.end]

    big, small = facts.buffers["big"], facts.buffers["small"]
    (big_map,) = holding(big.start)
    assert big_map.kind == "anon" and big_map.end >= big.end
    assert {i.kind for addr in range(small.start, small.end, 4096) for i in holding(addr)} == {
        "heap"
    }
    (mapped,) = [line["map"] for line in facts.other if line.get("map", {}).get("op") == 1]
    assert holding(mapped["start"]) == []  # unmapped by change_maps


def test_sink_sees_lifecycle_and_batches_in_order(traced):
    facts, sink, _maps, _allocs, _faults = traced
    parent, child = facts.pid_of("parent"), facts.pid_of("child")
    names = [call[0] for call in sink.calls]
    assert names[0] == "adopt"
    assert ("exec", parent) in sink.calls
    assert ("fork", parent, child) in sink.calls
    assert ("exit", child) in sink.calls
    assert sink.calls.index(("fork", parent, child)) < sink.calls.index(("exit", child))


def test_allocator_probes_are_gone_after_the_run(traced):
    """A uprobe holds its program: no cowalloc_* program left loaded means no probe left."""
    assert not wait_until_unloaded()


def test_attach_mode_warns_about_malloc_probes(tmp_path):
    """`cowtrace PID --malloc`: one warning line, a clean end, the probes gone."""
    target = subprocess.Popen(["sleep", "60"])
    try:
        result = run_cowtrace(
            [str(target.pid), "--malloc", "--duration", "0.5", "--quiet", "--json", "-"]
        )
    finally:
        target.kill()
        target.wait()
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--malloc" in lines[0] and "uprobe" in lines[0], lines
    summary = json.loads(result.stdout)
    assert summary["tracer"]["lost_alloc_events"] == 0
    assert not wait_until_unloaded()
