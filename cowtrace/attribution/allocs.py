"""Live malloc'd blocks per member, and which blocks a batch of copied pages landed in.

Blocks come from allocator records (run mode, or attach with --malloc) or from walking
glibc's heap at attach (glibc_heap.py, origin "recovered").  Every block gets a uid in one
family-wide registry; a member's table maps address -> uid, and a fork copies the parent's
table as it stood at the fork, so a child's copies land in the blocks it inherited.

Page-to-block matching is vectorised: blocks of a live heap do not overlap, so with blocks
sorted by address both starts and ends are sorted, and the blocks overlapping page
[p, p + 4096) are the index range [searchsorted(ends, p, right), searchsorted(starts, p+4096)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cowtrace.kernel.records import (
    ALLOC_OP_ALLOC,
    ALLOC_OP_FREE,
    ALLOC_OP_REALLOC,
    ALLOCATOR_GLIBC,
    ALLOCATOR_JEMALLOC,
    ALLOCATOR_TCMALLOC,
)

PAGE = 4096
ALLOCATOR_NAMES = {
    ALLOCATOR_GLIBC: "glibc",
    ALLOCATOR_JEMALLOC: "jemalloc",
    ALLOCATOR_TCMALLOC: "tcmalloc",
}


@dataclass(frozen=True)
class Site:
    """Where blocks were allocated: a stack id (or the caller address when there is none)."""

    origin: str  # "malloc" | "recovered"
    allocator: str
    stack_id: int  # -1 when none
    caller: int  # return address into the allocating code, 0 when none
    pid: int  # a member that allocated here (whose map symbolizes the stack)


class BlockRegistry:
    """Every block ever seen, by uid: address, size, site id (growable numpy columns)."""

    def __init__(self) -> None:
        self.addr = np.zeros(1024, np.uint64)
        self.size = np.zeros(1024, np.uint64)
        self.site = np.zeros(1024, np.int32)
        self.count = 0
        self.sites: list[Site] = []
        self._site_ids: dict[tuple[str, str, int, int], int] = {}

    def site_id(self, site: Site) -> int:
        key = (site.origin, site.allocator, site.stack_id, site.caller)
        found = self._site_ids.get(key)
        if found is None:
            found = self._site_ids[key] = len(self.sites)
            self.sites.append(site)
        return found

    def add(self, addr: int, size: int, site: int) -> int:
        if self.count == len(self.addr):
            grow = len(self.addr) * 2
            self.addr = np.resize(self.addr, grow)
            self.size = np.resize(self.size, grow)
            self.site = np.resize(self.site, grow)
        uid = self.count
        self.addr[uid], self.size[uid], self.site[uid] = addr, size, site
        self.count += 1
        return uid

    def add_many(self, addrs: np.ndarray, sizes: np.ndarray, site: int) -> np.ndarray:
        """Register a batch of blocks of one site (a recovered heap); returns their uids."""
        n = len(addrs)
        while self.count + n > len(self.addr):
            grow = len(self.addr) * 2
            self.addr = np.resize(self.addr, grow)
            self.size = np.resize(self.size, grow)
            self.site = np.resize(self.site, grow)
        uids = np.arange(self.count, self.count + n, dtype=np.int64)
        self.addr[uids], self.size[uids], self.site[uids] = addrs, sizes, site
        self.count += n
        return uids


class BlockTable:
    """One member's live blocks: address -> uid, with sorted arrays rebuilt when it changed."""

    def __init__(self, registry: BlockRegistry, live: dict[int, int] | None = None) -> None:
        self.registry = registry
        self.live: dict[int, int] = live if live is not None else {}
        self._sorted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def copy(self) -> BlockTable:
        clone = BlockTable(self.registry, dict(self.live))
        clone._sorted = self._sorted
        return clone

    def __len__(self) -> int:
        return len(self.live)

    def add(self, addr: int, uid: int) -> None:
        self.live[addr] = uid
        self._sorted = None

    def add_many(self, addrs: np.ndarray, uids: np.ndarray) -> None:
        self.live.update(zip(addrs.tolist(), uids.tolist(), strict=True))
        self._sorted = None

    def remove(self, addr: int) -> None:
        if self.live.pop(addr, None) is not None:
            self._sorted = None

    def apply(self, op: int, addr: int, old_addr: int, size: int, site: int) -> None:
        """One allocator call, as the ALLOC_EVENT_DTYPE record gives it."""
        if op == ALLOC_OP_FREE:
            self.remove(addr)
        elif op == ALLOC_OP_ALLOC:
            if addr:
                self.add(addr, self.registry.add(addr, size, site))
        elif op == ALLOC_OP_REALLOC:
            if old_addr and (addr or size == 0):  # realloc(p, 0) frees; a failed one keeps p
                self.remove(old_addr)
            if addr:
                self.add(addr, self.registry.add(addr, size, site))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """starts, ends (uint64) and uids (int64), sorted by address, overlaps dropped."""
        if self._sorted is None:
            n = len(self.live)
            starts = np.fromiter(self.live.keys(), np.uint64, n)
            uids = np.fromiter(self.live.values(), np.int64, n)
            order = np.argsort(starts, kind="stable")
            starts, uids = starts[order], uids[order]
            ends = starts + self.registry.size[uids]
            if n > 1:
                # A stale block (its free was lost) can overlap a newer one: keep the newer.
                reach = np.maximum.accumulate(ends)
                clash = np.zeros(n, bool)
                clash[1:] = starts[1:] < reach[:-1]
                if clash.any():
                    keep = ~clash
                    starts, ends, uids = starts[keep], ends[keep], uids[keep]
            self._sorted = (starts, ends, uids)
        return self._sorted


@dataclass
class PageBlocks:
    """The result of matching copied pages to blocks (one entry per copied page)."""

    best: np.ndarray  # uid of the block covering most of the page, -1 if none
    pair_copy: np.ndarray  # (page index, block uid) for every block overlapping a page
    pair_uid: np.ndarray


def match_pages(table: BlockTable, pages: np.ndarray) -> PageBlocks:
    """Which blocks overlap each page of `pages` (page-aligned uint64 addresses)."""
    n = len(pages)
    none = np.full(n, -1, np.int64)
    empty = np.zeros(0, np.int64)
    if n == 0 or len(table) == 0:
        return PageBlocks(none, empty, empty)
    starts, ends, uids = table.arrays()
    lo = np.searchsorted(ends, pages, side="right")
    hi = np.searchsorted(starts, pages + np.uint64(PAGE), side="left")
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    if total == 0:
        return PageBlocks(none, empty, empty)
    copy_index = np.repeat(np.arange(n), counts)
    first = np.cumsum(counts) - counts
    position = np.arange(total) - np.repeat(first, counts) + np.repeat(lo, counts)
    page = pages[copy_index]
    overlap = np.minimum(ends[position], page + np.uint64(PAGE)).astype(np.int64) - np.maximum(
        starts[position], page
    ).astype(np.int64)
    # Per page, the block with the largest overlap (ties: the lower address).
    order = np.lexsort((-overlap, copy_index))
    leaders = order[np.flatnonzero(np.r_[True, np.diff(copy_index[order]) != 0])]
    best = none.copy()
    best[copy_index[leaders]] = uids[position[leaders]]
    return PageBlocks(best, copy_index, uids[position])
