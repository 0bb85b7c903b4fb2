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

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.kernel.abi import (
    ALLOC_OP_ALLOC,
    ALLOC_OP_FREE,
    ALLOC_OP_REALLOC,
)

PAGE = PAGE_SIZE
_MASK = np.uint64(~(PAGE - 1) & 0xFFFFFFFFFFFFFFFF)


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

    def add_many(self, addrs: np.ndarray, sizes: np.ndarray, site: int | np.ndarray) -> np.ndarray:
        """Register a batch of blocks (of one site, or one each); returns their uids."""
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


NEVER = np.int64(2**63 - 1)
BIG_BLOCK = 1 << 20  # recent blocks this large are matched by brute force (they are few)


class BlockTable:
    """One member's blocks, with lifetimes, for matching copied pages as of their timestamps.

    Blocks sit in a sorted base table (numpy, shared with forked children, never modified)
    whose entries carry the time they were freed (`died`, per table, allocated on the first
    free), plus a small side table of blocks allocated since (with birth and death times).
    Allocator calls are applied as they come, in timestamp order, and a fault at time t sees
    exactly the blocks born <= t < died: so a process that mallocs between its copies needs no
    re-sort per copy, and a copy made inside free() (before the free returned) still lands in
    the block being freed.  A fork costs no copy of the heap's table: 32 workers of a master
    with a million blocks share one base.
    """

    def __init__(self, registry: BlockRegistry) -> None:
        self.registry = registry
        empty = np.zeros(0, np.uint64)
        self._base: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            empty,
            empty,
            np.zeros(0, np.int64),
        )
        self._died: np.ndarray | None = None  # None: every base block alive
        self._ndead = 0
        self._side: dict[int, list[int]] = {}  # uid -> [addr, born, died]
        self._side_live: dict[int, int] = {}  # addr -> uid of the side table's live blocks

    def copy(self) -> BlockTable:
        clone = BlockTable.__new__(BlockTable)
        clone.registry, clone._base = self.registry, self._base
        clone._died = self._died.copy() if self._died is not None else None
        clone._ndead = self._ndead
        clone._side = {uid: list(entry) for uid, entry in self._side.items()}
        clone._side_live = dict(self._side_live)
        return clone

    def __len__(self) -> int:
        """Blocks held (alive or not yet compacted away): zero means nothing to match."""
        return len(self._base[0]) + len(self._side)

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """Addresses and uids of the blocks alive now."""
        starts, _, uids = self._base
        alive = self._died == NEVER if self._died is not None else slice(None)
        side_addrs = np.fromiter(self._side_live.keys(), np.uint64, len(self._side_live))
        side_uids = np.fromiter(self._side_live.values(), np.int64, len(self._side_live))
        return np.concatenate([starts[alive], side_addrs]), np.concatenate([uids[alive], side_uids])

    def add_many(self, addrs: np.ndarray, uids: np.ndarray) -> None:
        """Blocks that existed before anything was traced (a recovered heap)."""
        live_addrs, live_uids = self.live()
        self._rebuild(np.concatenate([live_addrs, addrs]), np.concatenate([live_uids, uids]))

    def apply_many(
        self,
        ops: list[int],
        addrs: list[int],
        old_addrs: list[int],
        sizes: list[int],
        uids: list[int],
        stamps: list[int],
    ) -> None:
        """`apply` for a run of one process' calls in ts order, blocks already registered
        (`uids`, -1 for frees).  Frees of base blocks are gathered and marked in one go."""
        side, side_live = self._side, self._side_live
        kill_addrs: list[int] = []
        kill_ts: list[int] = []
        never = int(NEVER)

        def end(block: int, ts: int) -> None:
            """The block at `block` ends at `ts`: a traced one now, a base one in `_kill`."""
            found = side_live.pop(block, None)
            if found is None:
                kill_addrs.append(block)
                kill_ts.append(ts)
            else:
                side[found][2] = ts

        for op, addr, old, size, uid, ts in zip(
            ops, addrs, old_addrs, sizes, uids, stamps, strict=True
        ):
            if op == ALLOC_OP_REALLOC:
                if old and (addr or size == 0):  # realloc(p, 0) frees; a failed one keeps p
                    end(old, ts)
            elif op != ALLOC_OP_FREE and op != ALLOC_OP_ALLOC:
                continue
            if addr == 0:
                continue
            # a free, or an allocation at an address still held (its free was lost)
            end(addr, ts)
            if op != ALLOC_OP_FREE:
                side[uid] = [addr, ts, never]
                side_live[addr] = uid
        if kill_addrs:
            self._kill(np.array(kill_addrs, np.uint64), np.array(kill_ts, np.int64))

    def _kill(self, addrs: np.ndarray, stamps: np.ndarray) -> None:
        """Mark base blocks at `addrs` freed at `stamps` (the first time only)."""
        starts = self._base[0]
        if len(starts) == 0:
            return
        pos = np.minimum(np.searchsorted(starts, addrs), len(starts) - 1)
        hit = starts[pos] == addrs
        if not hit.any():
            return
        if self._died is None:
            self._died = np.full(len(starts), NEVER, np.int64)
        pos, stamps = pos[hit], stamps[hit]
        order = np.lexsort((stamps, pos))  # earliest stamp per position first
        pos, stamps = pos[order], stamps[order]
        first = np.r_[True, pos[1:] != pos[:-1]]
        pos, stamps = pos[first], stamps[first]
        alive = self._died[pos] == NEVER
        self._died[pos[alive]] = stamps[alive]
        self._ndead += int(alive.sum())

    def _rebuild(self, addrs: np.ndarray, uids: np.ndarray) -> None:
        self._base = _sorted_blocks(self.registry, addrs, uids)
        self._died, self._ndead = None, 0
        self._side, self._side_live = {}, {}

    def compact(self) -> None:
        """Fold the side table and the dead into a new base, once they are many.

        Called when no fault older than the changes applied so far is expected (after a
        drained batch): blocks freed before then are forgotten."""
        if len(self._side) + self._ndead > max(4096, len(self._base[0]) // 8):
            self._rebuild(*self.live())
        elif len(self._side) > len(self._side_live):
            self._side = {u: e for u, e in self._side.items() if e[2] == NEVER}

    def parts(self) -> list[_Part]:
        """Tables whose union is every block with its lifetime (see `match_pages`)."""
        starts, ends, uids = self._base
        out = [_Part(starts, ends, uids, None, self._died if self._ndead else None, False)]
        if self._side:
            side_uids = np.fromiter(self._side.keys(), np.int64, len(self._side))
            info = np.array(list(self._side.values()), np.int64).reshape(-1, 3)
            side_starts = info[:, 0].astype(np.uint64)
            side_ends = side_starts + self.registry.size[side_uids]
            big = (side_ends - side_starts) >= BIG_BLOCK
            for pick, brute in ((~big, False), (big, True)):
                if pick.any():
                    order = np.argsort(side_starts[pick], kind="stable")
                    out.append(
                        _Part(
                            side_starts[pick][order],
                            side_ends[pick][order],
                            side_uids[pick][order],
                            info[pick, 1][order],
                            info[pick, 2][order],
                            brute,
                        )
                    )
        return out


@dataclass
class _Part:
    """Blocks sorted by start; `born`/`died` None mean always/never.  Unless `overlapping`,
    the blocks are disjoint (so ends are sorted too); the side table's may overlap (an
    address freed and reused), and big ones are matched by brute force."""

    starts: np.ndarray
    ends: np.ndarray
    uids: np.ndarray
    born: np.ndarray | None
    died: np.ndarray | None
    brute: bool


def _sorted_blocks(
    registry: BlockRegistry, addrs: np.ndarray, uids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(addrs, kind="stable")
    starts, uids = addrs[order].astype(np.uint64), uids[order].astype(np.int64)
    ends = starts + registry.size[uids]
    if len(starts) > 1:
        # A stale block (its free was lost) can overlap another: keep the lower one.
        reach = np.maximum.accumulate(ends)
        clash = np.zeros(len(starts), bool)
        clash[1:] = starts[1:] < reach[:-1]
        if clash.any():
            keep = ~clash
            starts, ends, uids = starts[keep], ends[keep], uids[keep]
    return starts, ends, uids


@dataclass
class PageBlocks:
    """The result of matching copied pages to blocks."""

    best: np.ndarray  # per page: uid of the block covering most of it, -1 if none
    pair_copy: np.ndarray  # per (page, overlapping block) pair: the page's index,
    pair_uid: np.ndarray  # the block,
    pair_page: np.ndarray  # which page of the block it is (0 = the one holding its start),
    pair_small: np.ndarray  # and whether the block is a page or less (spans at most two)


_LOW40 = np.int64((1 << 40) - 1)


def match_pages(table: BlockTable, pages: np.ndarray, ts: np.ndarray) -> PageBlocks:
    """Which blocks, alive at `ts`, overlap each page of `pages` (page-aligned uint64)."""
    n = len(pages)
    best = np.full(n, -1, np.int64)
    if n == 0 or len(table) == 0:
        empty = np.zeros(0, np.int64)
        return PageBlocks(best, empty, empty, empty.astype(np.uint64), empty.astype(bool))
    # In address order: binary searches then move forward only, and the block arrays are
    # walked in order (both much kinder to the cache); undone at the end.
    order = np.argsort(pages, kind="stable")
    found = [_overlaps(part, pages[order], ts[order].astype(np.int64)) for part in table.parts()]
    best_overlap = np.zeros(n, np.int64)
    best_start = np.zeros(n, np.uint64)
    for copy_index, uids, overlap, starts, _, _ in found:
        if len(copy_index) == 0:
            continue
        # Per page, the block with the largest overlap, ties to the lower address: pairs come
        # grouped by page and in address order, so the largest (overlap, -pair index) wins.
        heads = np.flatnonzero(np.r_[True, copy_index[1:] != copy_index[:-1]])
        rank = _LOW40 - np.arange(len(copy_index), dtype=np.int64)
        winner = np.maximum.reduceat((overlap << np.int64(40)) | rank, heads)
        chosen = _LOW40 - (winner & _LOW40)
        page = copy_index[heads]
        better = (overlap[chosen] > best_overlap[page]) | (
            (overlap[chosen] == best_overlap[page])
            & ((best[page] < 0) | (starts[chosen] < best_start[page]))
        )
        page, chosen = page[better], chosen[better]
        best[page] = uids[chosen]
        best_overlap[page] = overlap[chosen]
        best_start[page] = starts[chosen]
    unsorted = np.empty_like(best)
    unsorted[order] = best
    return PageBlocks(
        unsorted,
        order[np.concatenate([f[0] for f in found])],
        np.concatenate([f[1] for f in found]),
        np.concatenate([f[4] for f in found]),
        np.concatenate([f[5] for f in found]),
    )


def _overlaps(
    part: _Part, pages: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(page index, uid, overlap bytes, block start, page of the block, small block) for each
    live block of `part` on a page of `pages` (sorted)."""
    n = len(pages)
    if part.brute:
        m = len(part.starts)
        copy_index = np.repeat(np.arange(n), m)
        position = np.tile(np.arange(m), n)
    else:
        hi = np.searchsorted(part.starts, pages + np.uint64(PAGE), side="left")
        if part.born is None:  # disjoint: ends sorted too
            lo = np.searchsorted(part.ends, pages, side="right")
        else:  # may overlap: a block starting within the longest length below can reach
            longest = np.uint64(int((part.ends - part.starts).max()))
            floor = np.where(pages > longest, pages - longest, np.uint64(0))
            lo = np.searchsorted(part.starts, floor, side="right")
        counts = np.maximum(hi - lo, 0)
        copy_index = np.repeat(np.arange(n), counts)
        first = np.cumsum(counts) - counts
        position = np.arange(len(copy_index)) + np.repeat(lo - first, counts)
    page = pages[copy_index]
    if part.brute or part.born is not None or part.died is not None:
        # (a disjoint table's index range holds only overlapping blocks, all alive)
        keep = (part.ends[position] > page) & (part.starts[position] < page + np.uint64(PAGE))
        when = ts[copy_index]
        if part.born is not None:
            keep &= part.born[position] <= when
        if part.died is not None:
            keep &= when < part.died[position]
        copy_index, position, page = copy_index[keep], position[keep], page[keep]
    block_start = part.starts[position]
    block_end = part.ends[position]
    # both operands unsigned and the result positive: subtract, then reinterpret
    overlap = (np.minimum(block_end, page + np.uint64(PAGE)) - np.maximum(block_start, page)).view(
        np.int64
    )
    page_of_block = (page - (block_start & _MASK)) >> np.uint64(12)
    small = (block_end - block_start) <= np.uint64(PAGE)
    return copy_index, part.uids[position], overlap, block_start, page_of_block, small
