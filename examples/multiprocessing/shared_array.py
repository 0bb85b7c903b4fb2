"""A large numpy array shared copy-on-write with a fork pool.

The parent builds the array before the pool, in its own page-aligned private anonymous mapping
(``numpy.empty`` would do too, but numpy asks for transparent huge pages on large blocks, and a
huge page is split before it is copied: a mapping of its own keeps the page arithmetic plain and
shows alone in smaps), and fills it, so every page is really in memory and shared
copy-on-write with each forked worker.
Then every worker sums the whole array (reads copy nothing), and one task writes a slice:
the worker that runs it copies exactly the pages the slice covers, no more.

Prints JSON lines: the array's address range, each task's pid and what it did, and the slice's
page range, so that a tracer's events can be checked against them. With ``--hold`` it waits for
a line on stdin before closing the pool, so that the workers can be inspected alive.

    python shared_array.py --mib 64 --workers 4 --write-from 1000 --write-count 300000
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import multiprocessing as mp
import os
import sys

import numpy as np

PAGE = mmap.PAGESIZE
_ARRAY: np.ndarray | None = None  # set in the parent before the fork, inherited by workers


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def read_all(_: int) -> tuple[int, float]:
    """A read-only task: sums the whole array (touches every page, writes none)."""
    assert _ARRAY is not None
    return os.getpid(), float(_ARRAY.sum())


def write_slice(first: int, count: int) -> int:
    """A writing task: overwrites elements [first, first + count)."""
    assert _ARRAY is not None
    _ARRAY[first : first + count] = -1.0
    return os.getpid()


def pages_of(start_byte: int, end_byte: int) -> int:
    """Pages a write of bytes [start_byte, end_byte) lands on (the copies it makes)."""
    return (end_byte - 1) // PAGE - start_byte // PAGE + 1


def main() -> int:
    global _ARRAY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--write-from", type=int, default=1000, help="first element written")
    parser.add_argument("--write-count", type=int, default=300_000, help="elements written")
    parser.add_argument("--hold", action="store_true", help="wait for stdin before closing")
    args = parser.parse_args()

    size = args.mib << 20
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    # A VMA flag of its own: the mapping is never merged with a neighbour, so smaps shows it
    # alone, and it is never backed by huge pages.
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    buf.madvise(mmap.MADV_DONTDUMP)
    start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    _ARRAY = np.frombuffer(buf, dtype=np.float64)
    _ARRAY[:] = np.arange(_ARRAY.size, dtype=np.float64)  # dirty every page in the parent
    item = _ARRAY.itemsize
    first_byte = start + args.write_from * item
    end_byte = first_byte + args.write_count * item
    emit(array={"start": start, "end": start + size, "pages": size // PAGE})
    emit(
        slice={
            "start": first_byte,
            "end": end_byte,
            "pages": pages_of(first_byte, end_byte),
            "first_page": first_byte // PAGE * PAGE,
        }
    )

    with mp.get_context("fork").Pool(args.workers) as pool:
        workers = sorted(p.pid for p in mp.active_children())
        emit(parent=os.getpid(), workers=workers)
        for pid, total in pool.map(read_all, range(args.workers * 2), chunksize=1):
            emit(task="read", pid=pid, sum=total)
        writer = pool.apply(write_slice, (args.write_from, args.write_count))
        emit(task="write", pid=writer)
        for pid, total in pool.map(read_all, range(args.workers * 2), chunksize=1):
            emit(task="read", pid=pid, sum=total)
        if args.hold:
            emit(holding=True)
            sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
