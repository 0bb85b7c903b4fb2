"""Attribution throughput: faults per second through AttributionEngine, on one core.

The event log is synthesized to look like a pre-fork server after attach: this process' own
memory map (a few hundred intervals: binary, libraries, heap, anonymous arenas), a recovered
heap of many small blocks and some large ones, 8 workers forked from the master, and copies
spread over heap (60%), anonymous memory (30%) and the binary's .data/.bss (10%) by 500
distinct writer stacks.  Every drain batch also carries allocator calls and map changes, so the
timestamp interleaving (segments between a process' own changes) is exercised too.

    .venv/bin/python bench/attribution.py [--events 2000000] [--batch 65536]

Prints events/s for: the engine alone, the engine building --events fields, and both plus
EventLog writing the lines (to /dev/null); then allocator records/s (malloc/free pairs).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from cowtrace.attribution.engine import AttributionEngine
from cowtrace.attribution.maps import Interval, MapSnapshot, read_proc_maps
from cowtrace.kernel.abi import (
    ALLOC_EVENT_DTYPE,
    ALLOC_OP_ALLOC,
    ALLOC_OP_FREE,
    EVENT_DTYPE,
)
from cowtrace.output.events import EventLog

MASTER = 1000
WORKERS = list(range(1001, 1009))
STACKS = 500
PAGE = 4096


class Resolver:
    """Stacks of 1-6 frames inside this process' own code."""

    def __init__(self, code: list[tuple[int, int]]) -> None:
        rng = np.random.default_rng(1)
        self.stacks = {}
        for sid in range(STACKS):
            lo, hi = code[int(rng.integers(len(code)))]
            self.stacks[sid] = [int(rng.integers(lo, hi)) for _ in range(int(rng.integers(1, 7)))]

    def addresses(self, stack_id: int) -> list[int]:
        return self.stacks.get(stack_id, [])

    def symbolize(self, pid: int, addr: int) -> str:
        return f"func_{addr & 0xFFFF:x} (libfoo.so)"


def build(engine: AttributionEngine, rng: np.random.Generator) -> dict[str, Any]:
    """Seed the master (this process' map, a synthetic heap), fork the workers."""
    intervals = read_proc_maps(os.getpid()) or []
    from cowtrace.attribution.allocs import BlockTable, Site
    from cowtrace.attribution.maps import ProcessMap

    engine.maps[MASTER] = ProcessMap(engine.regions, intervals)
    # A server-sized heap: the process' own [heap], grown to 64 MiB.
    own = next(i for i in intervals if i.kind == "heap")
    heap = Interval(own.start, own.start + (64 << 20), "heap", "[heap]", -1, False)
    engine.maps[MASTER].insert(heap)
    anon = [i for i in intervals if i.kind == "anon" and i.end - i.start >= 64 * PAGE]
    data = [i for i in engine.maps[MASTER].intervals if engine.regions.regions[i.region].section]
    # A recovered heap: 16..512-byte blocks back to back over the [heap], a few big ones.
    sizes = rng.integers(1, 32, 400_000).astype(np.uint64) * 16
    addrs = heap.start + 16 + np.concatenate(([0], np.cumsum(sizes + 16)[:-1])).astype(np.uint64)
    keep = addrs + sizes < heap.end
    addrs, sizes = addrs[keep], sizes[keep]
    table = BlockTable(engine.blocks)
    site = engine.blocks.site_id(Site("recovered", "glibc", -1, 0, MASTER))
    table.add_many(addrs, engine.blocks.add_many(addrs, sizes, site))
    engine.tables[MASTER] = table
    for pid in WORKERS:
        engine.on_fork(1, MASTER, pid)

    def pages(spans: list, n: int) -> np.ndarray:
        spans = [s for s in spans if s.end - s.start >= PAGE]
        starts = np.array([s.start for s in spans], np.uint64)
        lengths = np.array([(s.end - s.start) // PAGE for s in spans], np.uint64)
        pick = rng.integers(0, len(spans), n)
        return starts[pick] + (rng.integers(0, 1 << 30, n).astype(np.uint64) % lengths[pick]) * PAGE

    return {
        "heap": pages([heap], 1 << 16),
        "anon": pages(anon, 1 << 16) if anon else pages([heap], 1 << 16),
        "data": pages(data, 1 << 16) if data else pages([heap], 1 << 16),
        "free": addrs,
        "map": sorted([i for i in intervals if i.kind != "heap"] + [heap], key=lambda i: i.start),
    }


def batches(n_events: int, batch: int, pools: dict[str, np.ndarray], rng: np.random.Generator):
    ts = 10
    for start in range(0, n_events, batch):
        n = min(batch, n_events - start)
        records = np.zeros(n, EVENT_DTYPE)
        records["ts"] = ts + np.sort(rng.integers(0, 10_000_000, n))
        records["pid"] = rng.choice(WORKERS, n)
        records["tid"] = records["pid"]
        which = rng.random(n)
        pool = np.where(which < 0.6, 0, np.where(which < 0.9, 1, 2))
        index = rng.integers(0, 1 << 16, n)
        records["addr"] = np.choose(pool, [pools["heap"][index], pools["anon"][index],
                                           pools["data"][index]])  # fmt: skip
        records["kind"] = np.where(rng.random(n) < 0.9, 1, 2)
        records["stack_id"] = rng.integers(0, STACKS, n)
        records["pystack_id"] = -1
        # allocator calls and map changes of the same period, drained with the batch
        allocs = np.zeros(200, ALLOC_EVENT_DTYPE)
        allocs["ts"] = ts + np.sort(rng.integers(0, 10_000_000, 200))
        allocs["pid"] = rng.choice(WORKERS, 200)
        allocs["op"] = np.where(np.arange(200) % 2 == 0, ALLOC_OP_FREE, ALLOC_OP_ALLOC)
        allocs["addr"] = pools["free"][rng.integers(0, len(pools["free"]), 200)]
        allocs["size"] = np.where(allocs["op"] == ALLOC_OP_ALLOC, 64, 0)
        allocs["stack_id"] = rng.integers(0, STACKS, 200)
        # map changes: each a whole /proc snapshot (the master's map, with or without one more
        # anonymous mapping), as the map watcher hands them over
        when = ts + np.sort(rng.integers(0, 10_000_000, 10))
        pids = rng.choice(WORKERS, 10).tolist()
        maps = []
        for index, (at, pid) in enumerate(zip(when.tolist(), pids, strict=True)):
            lo = 0x10000000000 + index // 2 * 0x100000
            extra = [Interval(lo, lo + 0x100000, "anon", "", -1, False)] if index % 2 == 0 else []
            maps.append(MapSnapshot(at, pid, pools["map"] + extra))
        ts += 10_000_000
        yield records, allocs, maps


def run(n_events: int, batch: int, *, fields: bool, log: bool) -> float:
    rng = np.random.default_rng(7)
    intervals = read_proc_maps(os.getpid()) or []
    code = [(i.start, i.end) for i in intervals if i.executable and i.end < 1 << 62]
    engine = AttributionEngine(Resolver(code), event_fields=fields, read_proc=False)
    pools = build(engine, rng)
    work = list(batches(n_events, batch, pools, rng))
    events = EventLog(os.devnull) if log else None
    started = time.process_time()
    for records, allocs, maps in work:
        engine.on_map_snapshots(maps)
        engine.on_alloc_events(allocs)
        extra = engine.on_fault_events(records)
        if events is not None:
            events.write(records, extra)
    engine.flush()
    view = engine.view()
    engine.view(final=True)
    elapsed = time.process_time() - started
    if events is not None:
        events.close()
    assert view is not None and sum(r.copies for r in view.regions) > 0
    return n_events / elapsed


def run_allocs(n: int) -> float:
    """Allocator records per second (run mode, or --malloc): malloc/free pairs of 100 sites,
    drained 50k at a time with a few faults each time."""
    rng = np.random.default_rng(3)
    engine = AttributionEngine(None, read_proc=False)
    from cowtrace.attribution.maps import ProcessMap

    engine.maps[MASTER] = ProcessMap(engine.regions, [])
    allocs = np.zeros(n, ALLOC_EVENT_DTYPE)
    allocs["ts"] = np.arange(n) * 1000
    allocs["pid"] = MASTER
    allocs["op"] = np.where(np.arange(n) % 2 == 0, ALLOC_OP_ALLOC, ALLOC_OP_FREE)
    allocs["addr"] = 0x10000 + (np.arange(n) // 2 % 5000) * 64
    allocs["size"] = np.where(allocs["op"] == ALLOC_OP_ALLOC, 48, 0)
    allocs["stack_id"] = rng.integers(0, 100, n)
    started = time.process_time()
    for start in range(0, n, 50_000):
        engine.on_alloc_events(allocs[start : start + 50_000])
        faults = np.zeros(10, EVENT_DTYPE)
        faults["ts"], faults["pid"], faults["kind"] = allocs["ts"][start], MASTER, 1
        faults["addr"] = 0x10000
        engine.on_fault_events(faults)
    engine.flush()
    return n / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for label, fields, log in (
        ("engine", False, False),
        ("engine + --events fields", True, False),
        ("engine + --events fields + EventLog", True, True),
    ):
        rates = sorted(
            run(args.events, args.batch, fields=fields, log=log) for _ in range(args.runs)
        )
        print(f"{label:40s} median {rates[len(rates) // 2] / 1e3:8.0f} k events/s "
              f"(runs: {', '.join(f'{r / 1e3:.0f}k' for r in rates)})")  # fmt: skip
    rates = sorted(run_allocs(1_000_000) for _ in range(args.runs))
    print(f"{'allocator records':40s} median {rates[len(rates) // 2] / 1e3:8.0f} k records/s "
          f"(runs: {', '.join(f'{r / 1e3:.0f}k' for r in rates)})")  # fmt: skip


if __name__ == "__main__":
    main()
