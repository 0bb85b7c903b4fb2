"""Copied bytes by Python type: each copied page of a CPython member, turned into the objects
on it (summary `python_types`, the live view's pane, report, metrics).

Per drain and per writer: the copied pages' pools are read in runs (adjacent pools in one
pread of /proc/PID/mem, remote_reads.read_runs), each pool's header and free list give its live
blocks (pools.py), each block's header its type (objects.py), and the page's bytes go to the
objects on it (objects.apportion), under the category of the write that copied the page
(writers.py: refcount, gc, ...).  A page outside any pool is resolved through the malloc'd
block the attribution engine matched to it (allocator probes on), when that block starts with
an object; else it is "not resolved".  Pages are classed:

  objects       at least one byte of a live Python object on it;
  no_object     read, and no object on it (free or never-used pool blocks, PyMem buffers
                such as list item arrays, a malloc'd block that is no object: C data);
  not_resolved  outside every pool, and no allocator block known for it;
  unreadable    no process of the image could be read any more;
  over_budget   not examined: the resolution was over its time budget (budget.py; counted
                for the family only, results.OVER_BUDGET).

The page being read is the writer's own copy when the writer still lives (private since the
copy, so reading it shares nothing), else the same address in another process of the image
(its parent's page: what was copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cowtrace.host import remote_reads
from cowtrace.host.memory import PAGE_SIZE
from cowtrace.python.detect import PythonImage
from cowtrace.python.objects import (
    MAX_REFCNT,
    Blocks,
    TypeInfo,
    TypeNames,
    TypeReader,
    TypeTable,
    apportion,
    classify,
    read_type,
)
from cowtrace.python.pools import (
    ObjectLayout,
    live_blocks,
    object_layout,
    pool_headers,
)
from cowtrace.python.writers import CATEGORIES
from cowtrace.results import OVER_BUDGET, PythonTypeStat

PAGE_CLASSES = ("objects", "no_object", "not_resolved", "unreadable")
MAX_RUN_POOLS = 64  # pools per read at most (1 MiB)
TOP_TYPES = 100  # rows in the summary
TOP_TYPES_PER_PROCESS = 20


class Tally:
    """Copied bytes per (type id, category), objects and pages per type, pages per class."""

    def __init__(self) -> None:
        self.nbytes = np.zeros((16, len(CATEGORIES)), np.int64)
        self.objects = np.zeros(16, np.int64)
        self.pages = np.zeros(16, np.int64)
        self.page_classes = dict.fromkeys(PAGE_CLASSES, 0)

    def _fit(self, size: int) -> None:
        if size > len(self.objects):
            grown = max(size, 2 * len(self.objects))
            nbytes = np.zeros((grown, len(CATEGORIES)), np.int64)
            nbytes[: len(self.nbytes)] = self.nbytes
            self.nbytes = nbytes
            self.objects = np.concatenate(
                [self.objects, np.zeros(grown - len(self.objects), np.int64)]
            )
            self.pages = np.concatenate([self.pages, np.zeros(grown - len(self.pages), np.int64)])

    def add(
        self, type_id: np.ndarray, category: np.ndarray, nbytes: np.ndarray, objects: np.ndarray
    ) -> None:
        """One row per (copied page, type) with bytes on it."""
        if not len(type_id):
            return
        self._fit(int(type_id.max()) + 1)
        np.add.at(self.nbytes, (type_id, category), nbytes)
        np.add.at(self.objects, type_id, objects)
        np.add.at(self.pages, type_id, 1)

    def stats(self, names: TypeNames, limit: int | None = TOP_TYPES) -> tuple[PythonTypeStat, ...]:
        totals = self.nbytes.sum(axis=1)
        order = sorted(np.flatnonzero(totals).tolist(), key=lambda t: (-totals[t], names.names[t]))
        return tuple(
            PythonTypeStat(
                type=names.names[t],
                objects=int(self.objects[t]),
                copied_bytes=int(totals[t]),
                pages=int(self.pages[t]),
                by_category={
                    CATEGORIES[c]: int(self.nbytes[t, c])
                    for c in range(len(CATEGORIES))
                    if self.nbytes[t, c]
                },
            )
            for t in order[:limit]
        )

    def page_stats(self) -> dict[str, int]:
        return dict(self.page_classes)


@dataclass
class _Pools:
    """The pools of one batch's copied pages, and what each copied page is.

    The pools read whole are the rows of `words` (each pool's bytes as little-endian words,
    ascending addresses); per copied page, `row` is its pool's row (-1: not read whole), and
    which of the page classes below it falls in."""

    words: np.ndarray
    row: np.ndarray  # per page
    in_pool: np.ndarray  # per page: a pool's, its live blocks listed in `blocks`
    torn: np.ndarray  # per page: a pool whose free list did not add up
    unreadable: np.ndarray  # per page: no process of the image could be read there
    blocks: Blocks  # the live blocks on the copied pages of the `in_pool` pages' pools


class CopiedTypes:
    """The family's copied bytes by Python type, and each member's."""

    def __init__(self) -> None:
        self.names = TypeNames()
        self.tables: dict[int, TypeTable] = {}
        self.family = Tally()
        self.by_pid: dict[int, Tally] = {}
        self._retiring: list[int] = []
        self._retire_next: list[int] = []
        self.over_budget = 0  # copied pages not examined (budget.py)

    # ---- lifecycle -------------------------------------------------------------------------
    def on_fork(self, parent: int, child: int) -> None:
        """A child starts with its parent's types: the same objects at the same addresses."""
        table = self.tables.get(parent)
        if table is not None and child not in self.tables:
            copy = self.tables[child] = TypeTable(self.names)
            copy.infos = {a: i for a, i in table.infos.items() if i is not None}

    def retire(self, pid: int) -> None:
        """`pid` exited: its type cache goes after the next drain (which may still hold its
        last copies)."""
        self._retiring.append(pid)

    def end_drain(self) -> None:
        for pid in self._retire_next:
            self.tables.pop(pid, None)
        self._retire_next, self._retiring = self._retiring, []

    def forget(self, pid: int) -> None:
        """Drop a long-gone member's own figures (the family's keep its bytes)."""
        self.by_pid.pop(pid, None)
        self.tables.pop(pid, None)

    # ---- copies ----------------------------------------------------------------------------
    def skip(self, pages: int) -> None:
        """`pages` copied pages of CPython members were not examined (over the time budget):
        counted, so the types' figures say what they leave out."""
        self.over_budget += pages

    def add_copies(
        self,
        image: PythonImage,
        pid: int,
        readers: Sequence[int],
        addrs: np.ndarray,
        categories: np.ndarray,
        blocks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Copies of one writer: page addresses, their category index (CATEGORIES), and the
        allocator blocks on the copied pages the attribution knows of, when allocator probes
        ran: (copy index, block address, block size), a row per (copy, block) overlap."""
        if not len(addrs):
            return
        tally = self.by_pid.setdefault(pid, Tally())
        layout = object_layout(image.version)
        if layout is None:
            self._classes(tally, "not_resolved", len(addrs))
            return
        pages = addrs.astype(np.uint64) & np.uint64(~(PAGE_SIZE - 1) & (2**64 - 1))
        pools = _read_pools(pages, readers, layout)
        table = self.tables.setdefault(pid, TypeTable(self.names))
        reader = remote_reads.Reader(list(readers), keep_open=True)
        try:  # one open of each reader's /proc/PID/mem for the whole batch

            def read(addr: int) -> TypeInfo | None:
                return read_type(reader, image, layout, addr)

            if pools.in_pool.any():
                self._pool_pages(pools, layout, table, read, pages, categories, tally)
            self._classes(tally, "unreadable", int(pools.unreadable.sum()))
            self._classes(tally, "not_resolved", int(pools.torn.sum()))
            outside = np.flatnonzero(~pools.in_pool & ~pools.unreadable & ~pools.torn)
            if len(outside):
                self._block_pages(outside, pages, categories, blocks, table, read, reader, tally)
        finally:
            reader.close()

    def _classes(self, tally: Tally, name: str, count: int) -> None:
        if count:
            tally.page_classes[name] += count
            self.family.page_classes[name] += count

    def _pool_pages(
        self,
        pools: _Pools,
        layout: ObjectLayout,
        table: TypeTable,
        read: TypeReader,
        pages: np.ndarray,
        categories: np.ndarray,
        tally: Tally,
    ) -> None:
        """The copied pages in pools: each live block's type, the pages' bytes apportioned."""
        nrows = len(pools.words)
        per_pool = layout.pages_per_pool
        rows = pools.row[pools.in_pool]
        index = ((pages[pools.in_pool] % np.uint64(layout.pool_size)) // np.uint64(PAGE_SIZE))
        index = index.astype(np.int64)
        copied = np.zeros((nrows, per_pool), np.int64)
        np.add.at(copied, (rows, index), 1)
        category = np.zeros((nrows, per_pool), np.int64)
        category[rows, index] = categories[pools.in_pool]
        type_ids = classify(pools.words, pools.blocks, table, layout, read)
        shares = apportion(pools.blocks, type_ids, copied, per_pool)
        cats = category[shares.pool, shares.page]
        self.family.add(shares.type_id, cats, shares.nbytes, shares.objects)
        tally.add(shares.type_id, cats, shares.nbytes, shares.objects)
        covered = np.unique(shares.pool * per_pool + shares.page)
        copied_pages = int(copied.sum())
        with_objects = int(copied.reshape(-1)[covered].sum())
        self._classes(tally, "objects", with_objects)
        self._classes(tally, "no_object", copied_pages - with_objects)

    def _block_pages(
        self,
        outside: np.ndarray,
        pages: np.ndarray,
        categories: np.ndarray,
        blocks: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        table: TypeTable,
        read: TypeReader,
        reader: remote_reads.Reader,
        tally: Tally,
    ) -> None:
        """Pages outside every pool: each allocator block on the page that starts with an
        object gives that object's type its bytes on the page."""
        if blocks is None:
            self._classes(tally, "not_resolved", len(outside))
            return
        rows, block_addr, block_size = blocks
        order = np.argsort(rows, kind="stable")
        rows, block_addr, block_size = rows[order], block_addr[order], block_size[order]
        lo = np.searchsorted(rows, outside, side="left")
        hi = np.searchsorted(rows, outside, side="right")
        heads: dict[int, tuple[int, int] | None] = {}  # block -> (type id, offset) or None
        with_objects = without = 0
        ids: list[int] = []
        cats: list[int] = []
        nbytes: list[int] = []
        objects: list[int] = []
        for i, a, b in zip(outside.tolist(), lo.tolist(), hi.tolist(), strict=True):
            if a == b:
                continue
            page, found_any = int(pages[i]), False
            for start, size in zip(block_addr[a:b].tolist(), block_size[a:b].tolist(), strict=True):
                if start not in heads:
                    heads[start] = _block_object(reader, start, size, table, read)
                found = heads[start]
                low, high = max(start, page), min(start + size, page + PAGE_SIZE)
                if found is None or high <= low:
                    continue
                found_any = True
                ids.append(found[0])
                cats.append(int(categories[i]))
                nbytes.append(high - low)
                objects.append(int(page <= start < page + PAGE_SIZE))
            with_objects += found_any
            without += not found_any
        if ids:
            arrays = [np.array(x, np.int64) for x in (ids, cats, nbytes, objects)]
            self.family.add(*arrays)
            tally.add(*arrays)
        self._classes(tally, "objects", with_objects)
        self._classes(tally, "no_object", without)
        self._classes(tally, "not_resolved", len(outside) - with_objects - without)

    # ---- views -----------------------------------------------------------------------------
    def stats(self, limit: int | None = TOP_TYPES) -> tuple[PythonTypeStat, ...]:
        return self.family.stats(self.names, limit)

    def process_stats(self, pid: int, limit: int | None = TOP_TYPES) -> tuple[PythonTypeStat, ...]:
        tally = self.by_pid.get(pid)
        return () if tally is None else tally.stats(self.names, limit)

    def view_fields(self) -> dict[str, Any]:
        """The AttributionView fields (python_types, per pid, pages by class)."""
        return {
            "python_types": self.stats(None),  # all: the metrics sum the rest as "other"
            "python_types_by_pid": {
                pid: self.process_stats(pid, TOP_TYPES_PER_PROCESS) for pid in self.by_pid
            },
            "python_pages": {**self.family.page_stats(), OVER_BUDGET: self.over_budget},
        }

    @property
    def active(self) -> bool:
        return any(self.family.page_classes.values()) or self.over_budget > 0


def _block_object(
    reader: remote_reads.Reader, start: int, size: int, table: TypeTable, read: TypeReader
) -> tuple[int, int] | None:
    """(type id, offset) of the object a malloc'd block starts with, or None."""
    head = reader.read(start, 48) if size >= 16 else None
    if head is None:
        return None
    words = np.frombuffer(head, "<u8")
    for c in (0, 16, 32):
        if c + 16 > min(size, 48):
            break
        refcnt, addr = int(words[c // 8]), int(words[c // 8 + 1])
        if not 1 <= refcnt < MAX_REFCNT:
            continue
        if addr not in table.infos:
            table.add(addr, read(addr))
        info = table.infos[addr]
        if info is not None and info.offset == c and info.basicsize + c <= size:
            return table.names.id(info.name), c
    return None


def _read_pools(pages: np.ndarray, readers: Sequence[int], layout: ObjectLayout) -> _Pools:
    """Read the pools of the copied `pages` in runs of adjacent ones, parse their headers,
    and list their live blocks on the copied pages; class each page."""
    size = layout.pool_size
    pool_of = pages & np.uint64(~(size - 1) & (2**64 - 1))
    wanted, page_pool = np.unique(pool_of, return_inverse=True)
    page_pool = page_pool.reshape(-1)
    runs = _runs(wanted, size)
    data = _read_runs(runs, readers)
    failed: list[int] = []  # pools no reader could read whole
    if any(d is None for d in data):  # one unmapped pool fails its whole run: pool by pool
        kept = [(r, d) for r, d in zip(runs, data, strict=True) if d is not None]
        single = [
            (start + offset, size)
            for (start, length), d in zip(runs, data, strict=True)
            if d is None
            for offset in range(0, length, size)
        ]
        singles = _read_runs(single, readers)
        failed = [start for (start, _), d in zip(single, singles, strict=True) if d is None]
        read = [(r, d) for r, d in zip(single, singles, strict=True) if d is not None]
        data = [d for _, d in sorted([*kept, *read])]
    # One array of every pool read, ascending (numpy's large arrays get huge pages: far
    # fewer page faults than one bytes object joining them).
    blobs = [np.frombuffer(d, "<u8") for d in data if d is not None]
    words = np.concatenate(blobs or [np.zeros(0, np.uint64)]).reshape(-1, size // 8)
    whole = ~np.isin(wanted, np.array(failed, np.uint64))
    bases = wanted[whole]
    headers = pool_headers(words, layout)
    pool_row = np.where(whole, np.cumsum(whole) - 1, -1)  # -1: not read whole
    row = pool_row[page_pool]
    read_whole = row >= 0
    index = ((pages % np.uint64(size)) // np.uint64(PAGE_SIZE)).astype(np.int64)
    block_rows, offsets, torn_rows = live_blocks(
        words, bases, headers, layout, row[read_whole], index[read_whole]
    )
    valid = np.zeros(len(pages), bool)
    valid[read_whole] = headers.valid[row[read_whole]]
    torn = np.zeros(len(pages), bool)
    torn[read_whole] = torn_rows[row[read_whole]]
    unreadable = np.zeros(len(pages), bool)
    for pool in failed:
        # pymalloc maps whole arenas: a pool is never mapped in part.  So when the pool-sized
        # read failed but a copied page of it reads, the page is no pool's (a library's .data
        # next to a guard region, the binary's .bss): outside.
        mine = np.flatnonzero(pool_of == np.uint64(pool))
        copied = [(int(pages[i]), PAGE_SIZE) for i in mine.tolist()]
        if not any(d is not None for d in _read_runs(copied, readers)):
            unreadable[mine] = True
    return _Pools(
        words=words,
        row=row,
        in_pool=valid & ~torn,
        torn=valid & torn,
        unreadable=unreadable,
        blocks=Blocks(block_rows, offsets, headers.block_size[block_rows]),
    )


def _runs(pools: np.ndarray, size: int) -> list[tuple[int, int]]:
    """(start, length) runs of adjacent pools (`pools` ascending), MAX_RUN_POOLS at most."""
    if not len(pools):
        return []
    breaks = np.ones(len(pools), bool)
    breaks[1:] = np.diff(pools) != np.uint64(size)
    stretch = np.cumsum(breaks) - 1
    position = np.arange(len(pools)) - np.flatnonzero(breaks)[stretch]
    starts = np.flatnonzero(breaks | (position % MAX_RUN_POOLS == 0))
    lengths = np.diff(np.append(starts, len(pools))) * size
    return list(zip(pools[starts].tolist(), lengths.tolist(), strict=True))


def _read_runs(runs: list[tuple[int, int]], readers: Sequence[int]) -> list[bytes | None]:
    """Each run from the first reader that has it."""
    data: list[bytes | None] = [None] * len(runs)
    for pid in readers:
        missing = [i for i, d in enumerate(data) if d is None]
        if not missing:
            break
        got = remote_reads.read_runs(pid, [runs[i] for i in missing])
        for i, d in zip(missing, got, strict=True):
            data[i] = d
    return data
