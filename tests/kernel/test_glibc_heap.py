"""The glibc heap walker against a real process with known blocks (heap_target.c).

Reading another process' /proc/PID/mem needs ptrace rights (root in CI), hence tests/kernel.
Exact: every live block is found at its address with malloc_usable_size's size; no block
parked in a tcache or fastbin, or truly freed, is reported; at most the few blocks the C
runtime allocated before ours (pthread_create's) are extra.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cowtrace.attribution import glibc_heap
from cowtrace.attribution.engine import AttributionEngine
from cowtrace.attribution.maps import read_proc_maps
from cowtrace.output.events import FieldTexts
from cowtrace.output.summary import attribution_sections

SOURCE = Path(__file__).with_name("heap_target.c")


@pytest.fixture(scope="module")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("heap") / "heap_target"
    cc = shutil.which("gcc") or "cc"
    subprocess.run(
        [cc, "-O1", "-pthread", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SOURCE)],
        check=True,
    )
    return out


@pytest.fixture
def target(target_binary: Path):
    """(pid, live {addr: size}, freed set), the process waiting until the test ends."""
    proc = subprocess.Popen(
        [str(target_binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    live: dict[int, int] = {}
    freed: set[int] = set()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            item = json.loads(line)
            if "live" in item:
                live[item["live"][0]] = item["live"][1]
            elif "freed" in item:
                freed.add(item["freed"])
            elif "ready" in item:
                break
        yield proc.pid, live, freed - set(live)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.parametrize("whole_read", [glibc_heap.WHOLE_READ, 4096], ids=["whole", "windowed"])
def test_walker_finds_exact_live_blocks(target, whole_read, monkeypatch) -> None:
    """The heap read in one window, and in many small ones (as heaps over 64 MiB are)."""
    monkeypatch.setattr(glibc_heap, "WHOLE_READ", whole_read)
    pid, live, freed = target
    found = glibc_heap.walk(pid, read_proc_maps(pid) or [])
    blocks = dict(zip(found.addrs.tolist(), found.sizes.tolist(), strict=True))
    assert {addr: blocks.get(addr) for addr in live} == live
    assert not freed & set(blocks), "a freed or parked block was reported live"
    assert len(set(blocks) - set(live)) <= 4  # the runtime's own (pthread_create's) blocks
    assert found.arenas == 2  # main arena and the thread's
    # Parked: 7 in the main tcache and 3 in a main fastbin (chunk 0x40), and the thread's one
    # fastbin-sized block (48 bytes), moved from its tcache to a fastbin at thread exit.
    assert found.parked == 7 + 3 + 1
    assert list(found.addrs) == sorted(found.addrs)


def test_adopt_recovers_blocks_and_attributes_copies(target) -> None:
    """adopt(recover_heap=True) puts the recovered blocks in the table copies resolve to."""
    from cowtrace.kernel.abi import EVENT_DTYPE

    pid, live, _ = target
    engine = AttributionEngine(None)
    engine.adopt(pid, None, recover_heap=True)
    biggest = max(live, key=lambda a: live[a])  # the 1 MiB mmapped block
    records = np.zeros(3, EVENT_DTYPE)
    for i in range(3):
        records[i]["ts"] = 1000 + i
        records[i]["pid"] = pid
        records[i]["kind"] = 1
        records[i]["stack_id"] = -1
        records[i]["addr"] = ((biggest + 4096 * (i + 1)) // 4096) * 4096
    engine.on_fault_events(records)
    sections = attribution_sections(engine.view(final=True))
    (alloc,) = sections["allocations"]
    assert alloc["origin"] == "recovered" and alloc["site"] == []
    assert alloc["copies"] == 3 and alloc["blocks"] == 1
    assert alloc["largest"] == [{"addr": biggest, "size": live[biggest], "copied_pages": 3}]


def test_adopted_map_resolves_real_regions(target) -> None:
    """Copies at real addresses of an adopted process: its [heap] block, its libc .data."""
    from cowtrace.kernel.abi import EVENT_DTYPE

    pid, live, _ = target
    intervals = read_proc_maps(pid) or []
    engine = AttributionEngine(None, event_fields=True)
    engine.adopt(pid, None, recover_heap=True)
    heap = next(i for i in intervals if i.kind == "heap")
    block = next(a for a in sorted(live) if heap.start <= a and a + live[a] < heap.end and
                 live[a] >= 4096)  # fmt: skip
    libc_data = next(
        i.start
        for i in engine.maps[pid].intervals
        if "libc.so" in i.name and engine.regions.regions[i.region].section == ".data"
    )
    records = np.zeros(2, EVENT_DTYPE)
    records["pid"], records["kind"], records["stack_id"] = pid, 1, -1
    records["ts"] = [10, 11]
    records["addr"] = [(block + 4095) & ~4095, libc_data]  # a page wholly inside the block
    extra = engine.on_fault_events(records)
    assert extra is not None
    fields = [json.loads("{" + e[2:] + "}") for e in FieldTexts().attribution(extra)]
    assert fields[0]["mapping"] == "heap"
    assert fields[0]["alloc"] == {"addr": block, "size": live[block], "origin": "recovered"}
    assert fields[1]["mapping"] == "file" and "libc.so" in fields[1]["path"]
    assert fields[1]["offset"] > 0
    sections = attribution_sections(engine.view(final=True))
    regions = {(r["kind"], r["section"]) for r in sections["regions"]}
    assert regions == {("heap", None), ("file", ".data")}
