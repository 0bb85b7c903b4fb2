"""Resolution speed of copies by Python type (issue 14, item 2): copied pages per second.

Synthetic pymalloc pools (tests/unit/pool_samples.py: CPython 3.11's layout, bytes built as
obmalloc.c lays them out) stand in for the target's memory, served by a fake
remote_reads.read_runs, so what is timed is cowtrace's own work per drain: grouping the copies by
pool, parsing each pool's header and free list, recognising every live block's type through
the per-pid type table (warm: the types were read once), apportioning each copied page's bytes
and adding them up, family and process.  Rates are per second of this process' CPU time (one
core), so other load on the machine does not halve them.  The reads themselves are timed
apart, on this process' own memory through /proc/self/mem (one pread per run of pools, as
cowtrace does; wall-clock).

Two orders of copies: "sequential" (a refcount sweep over objects allocated together: each
pool's pages come in one drain) and "random" (each drain hits ~2/3 of the pools with one or
two of their pages: every pool read, parsed and classified 2-3 times).

Usage: .venv/bin/python bench/python_types.py [--pools 4096] [--batch 4096] [--runs 5]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cowtrace.host import remote_reads  # noqa: E402
from cowtrace.python import copied_types  # noqa: E402
from cowtrace.python.copied_types import CopiedTypes  # noqa: E402
from cowtrace.python.detect import PythonImage  # noqa: E402
from cowtrace.python.offsets import table_offsets  # noqa: E402
from cowtrace.python.writers import CATEGORIES  # noqa: E402
from tests.unit.pool_samples import POOL, pool, table  # noqa: E402

POOL_SIZE = 16384


def synthetic_memory(pools: int) -> dict[int, bytes]:
    """Pools of four size classes: class instances, tuples, floats, some raw buffers and
    free blocks, every pool full."""
    rng = np.random.default_rng(14)
    kinds = [(2, "app.A"), (3, "tuple"), (1, "float"), (2, "app.B")]
    memory = {}
    for k in range(pools):
        szidx, name = kinds[k % len(kinds)]
        blocks = (POOL_SIZE - 48) // ((szidx + 1) * 16)
        objects = [name if rng.random() > 0.05 else None for _ in range(blocks)]
        free = sorted(rng.choice(blocks, size=blocks // 20, replace=False).tolist())
        base = POOL + k * POOL_SIZE
        memory[base] = pool(szidx, objects, free=free, base=base)
    return memory


def resolution_rate(pools: int, batch: int, runs: int, order: str) -> list[float]:
    memory = synthetic_memory(pools)
    blob = b"".join(memory[POOL + k * POOL_SIZE] for k in range(pools))  # one region

    def read_runs(_pid: int, wanted: list[tuple[int, int]]) -> list[bytes | None]:
        return [blob[a - POOL : a - POOL + size] for a, size in wanted]

    copied_types.remote_reads.read_runs = read_runs  # type: ignore[assignment]
    image = PythonImage(pid=1, version="3.11", offsets=table_offsets("3.11"), runtime=0, path="")
    pages = POOL + np.arange(pools * 4, dtype=np.uint64) * np.uint64(4096)
    categories = np.full(len(pages), CATEGORIES.index("refcount"))
    rates = []
    for _ in range(runs):
        types = CopiedTypes()
        warm = table()
        warm.names = types.names
        types.tables[1] = warm
        if order == "random":  # a pool's pages in different drains: each read 1-4 times
            sequence = np.random.default_rng(5).permutation(len(pages))
        else:  # a sweep over objects allocated together: a pool's pages in one drain
            sequence = np.arange(len(pages))
        started = time.process_time()  # CPU time: "on one core", whatever else runs
        for lo in range(0, len(pages), batch):
            chosen = sequence[lo : lo + batch]
            types.add_copies(image, 1, [1], pages[chosen], categories[chosen])
            types.end_drain()
        rates.append(len(pages) / (time.process_time() - started))
        assert types.family.page_classes["objects"] == len(pages)
    return rates


def read_rate(pools: int, runs: int) -> list[float]:
    """pread of /proc/self/mem, runs of up to 64 pools, over `pools` pools of our own."""
    region = mmap.mmap(-1, pools * POOL_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.write(b"\1" * len(region))
    import ctypes

    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        wanted = [(base + k * POOL_SIZE, 64 * POOL_SIZE) for k in range(0, pools - 63, 64)]
        remote_reads.read_runs(os.getpid(), wanted)
        rates.append(len(wanted) * 64 * 4 / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096, help="copies per drain")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    reads = read_rate(args.pools, args.runs)
    for order in ("sequential", "random"):
        rates = resolution_rate(args.pools, args.batch, args.runs, order)
        print(
            f"resolution, {order} order: {statistics.median(rates):,.0f} copied pages/s "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}) over {args.pools * 4} pages, "
            f"{args.batch} copies per drain"
        )
    print(
        f"reads (/proc/self/mem, 64-pool runs): {statistics.median(reads):,.0f} pages/s "
        f"(min {min(reads):,.0f})"
    )


if __name__ == "__main__":
    main()
