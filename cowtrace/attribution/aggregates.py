"""What the attribution engine adds up from resolved copies: per mapping, per writer stack, per
allocation site, and each process' exit-time copies; and the ranked tables built from them.

Each aggregate is bounded for the agent, which runs for weeks under worker churn: what it keeps
per process is dropped by `retire`/`forget` while its totals (and the number of processes
behind each row) stay right.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cowtrace.attribution.allocs import BlockRegistry, PageBlocks, Site
from cowtrace.attribution.maps import RegionRegistry
from cowtrace.attribution.tally import IdTally, RecentCopies, any_flagged
from cowtrace.attribution.writers import NO_STACK, Stack
from cowtrace.kernel.abi import KIND_COPY
from cowtrace.results import AllocationStat, BlockStat, RegionStat, WriterStat

LARGEST_BLOCKS = 5
StackOf = Callable[[int], Stack]  # a writer stack id -> its frames


class RegionCopies:
    """Copies, reuses and zero-fills per mapping (region id x kind), and copies per (pid,
    mapping kind) for the metrics."""

    def __init__(self, regions: RegionRegistry) -> None:
        self.regions = regions
        self.counts = np.zeros((64, 4), np.int64)  # region id x kind
        self.pids = IdTally()  # copies per region; counts unused (kinds are in the matrix)
        self.by_kind: dict[tuple[int, str], int] = {}

    def add(self, pid: int, region: np.ndarray, kinds: np.ndarray) -> None:
        if len(region) == 0:
            return
        rows = len(self.regions)
        if rows > len(self.counts):
            grown = np.zeros((max(rows, 2 * len(self.counts)), 4), np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        flat = np.bincount(region.astype(np.int64) * 4 + kinds, minlength=rows * 4)
        self.counts[:rows] += flat[: rows * 4].reshape(rows, 4)
        copied = region[kinds == KIND_COPY]
        if len(copied):
            self.pids.add(pid, copied)
            per_region = np.bincount(copied, minlength=rows)
            for rid in np.flatnonzero(per_region).tolist():  # metrics: per (pid, mapping kind)
                key = (pid, self.regions.regions[rid].kind)
                self.by_kind[key] = self.by_kind.get(key, 0) + int(per_region[rid])

    def retire(self, pid: int) -> None:
        self.pids.retire(pid)
        for key in [key for key in self.by_kind if key[0] == pid]:
            del self.by_kind[key]

    def stats(self, top: int) -> list[RegionStat]:
        stats = []
        processes = self.pids.processes()
        rows = min(len(self.regions), len(self.counts))
        for rid in range(rows):
            _, copies, reuses, zeros = self.counts[rid].tolist()
            if copies == reuses == zeros == 0:
                continue
            region = self.regions.regions[rid]
            stats.append(
                RegionStat(
                    kind=region.kind,
                    name=region.name,
                    section=region.section,
                    copies=copies,
                    reuses=reuses,
                    zero_fills=zeros,
                    processes=int(processes[rid]) if rid < len(processes) else 0,
                )
            )
        stats.sort(key=lambda s: (-s.copies, -s.reuses, -s.zero_fills, s.kind, s.name))
        return stats[:top]


class WriterCopies:
    """Copies per native writer stack id, merged by frames at view time, and every stack id any
    record named (so that ids no kept process uses can be released)."""

    def __init__(self) -> None:
        self.writers = IdTally()  # copies per native stack id
        self.users = IdTally()  # every stack id in any record, by pid (release)
        self.retired: dict[Stack, int] = {}  # forgotten pids per writer (see retire)
        self.released: dict[Stack, int] = {}  # copies of released stack ids

    def first_pid(self, sid: int) -> int:
        first = self.writers.first_pid
        return int(first[sid]) if sid < len(first) else 0

    def retire(self, pid: int, stack_of: StackOf) -> None:
        self.users.retire(pid)
        # Writers are merged by frames at view time: remember by frames which ones it wrote
        # with (each once), resolved now while the stack ids still say what they were.
        for stack in {stack_of(sid) for sid in self.writers.retire(pid).tolist()}:
            self.retired[stack] = self.retired.get(stack, 0) + 1

    def release(self, kept_sites: list[int], stack_of: StackOf) -> np.ndarray:
        """Stack ids no kept process used: their copies are folded into the writers by frames
        and the ids forgotten; the ids."""
        kept = [*self.users.seen.values(), kept_sites]
        used = np.flatnonzero(self.users.counts)
        released = np.setdiff1d(used, np.concatenate(kept).astype(np.int64))
        writers = self.writers
        for sid in released[released < len(writers.counts)].tolist():
            copies = int(writers.counts[sid])
            if copies:
                stack = stack_of(sid)
                self.released[stack] = self.released.get(stack, 0) + copies
        writers.clear(released)
        self.users.clear(released)
        return released

    def stats(self, stack_of: StackOf, top: int) -> list[WriterStat]:
        merged: dict[Stack, list[Any]] = {}
        tally = self.writers
        for sid in np.flatnonzero(tally.counts).tolist():
            stack = stack_of(sid)
            entry = merged.setdefault(stack, [0, np.zeros(len(tally.counts), bool)])
            entry[0] += int(tally.counts[sid])
            entry[1][sid] = True
        stats = []
        for stack in self.released:  # writers whose every stack id was released
            merged.setdefault(stack, [0, np.zeros(len(tally.counts), bool)])
        for stack, (copies, ids) in merged.items():
            # processes that wrote with any of the stack ids that resolve to these frames
            pids = sum(any_flagged(seen, ids) for seen in tally.seen.values())
            pids += self.retired.get(stack, 0)
            copies += self.released.get(stack, 0)
            stats.append(
                WriterStat(
                    frames=stack.frames, copies=copies, processes=pids, truncated=stack.truncated
                )
            )
        stats.sort(key=lambda s: (-s.copies, s.frames))
        return stats[:top]


class BlockCopies:
    """Copies per allocation site, and which pages of which blocks were copied (by anyone):
    blocks of a page or less span at most two pages, kept as two flags per uid; bigger ones as
    uid << 32 | page index."""

    def __init__(self, blocks: BlockRegistry) -> None:
        self.blocks = blocks
        self.site_copies = np.zeros(16, np.int64)
        self.touched = np.zeros((2, 1024), bool)
        self.pairs: list[np.ndarray] = []

    def count_sites(self, best: np.ndarray) -> None:
        hit = best[best >= 0]
        if len(hit) == 0:
            return
        sites = self.blocks.site[hit]
        need = len(self.blocks.sites)
        if need > len(self.site_copies):
            grown = np.zeros(max(need, 2 * len(self.site_copies)), np.int64)
            grown[: len(self.site_copies)] = self.site_copies
            self.site_copies = grown
        counts = np.bincount(sites, minlength=need)
        self.site_copies[:need] += counts[:need]

    def touch(self, matched: PageBlocks) -> None:
        """Note copied (page, block) pairs; cheap flags for small blocks, sets for big ones."""
        if self.blocks.count > self.touched.shape[1]:
            grown = np.zeros((2, max(self.blocks.count, 2 * self.touched.shape[1])), bool)
            grown[:, : self.touched.shape[1]] = self.touched
            self.touched = grown
        small, uids, page = matched.pair_small, matched.pair_uid, matched.pair_page
        self.touched[page[small].astype(np.int64), uids[small]] = True
        if not small.all():
            big = ~small
            self.pairs.append((uids[big].astype(np.uint64) << np.uint64(32)) | page[big])

    def _unique_pairs(self) -> np.ndarray:
        if not self.pairs:
            return np.zeros(0, np.uint64)
        self.pairs = [np.unique(np.concatenate(self.pairs))]
        return self.pairs[0]

    def _touched_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """uids of blocks with a copied page, and how many of their pages were copied."""
        flags = self.touched[:, : self.blocks.count]
        small = np.flatnonzero(flags[0] | flags[1])
        small_pages = flags[0, small].astype(np.int64) + flags[1, small]
        pairs = self._unique_pairs()
        big, big_pages = np.unique((pairs >> np.uint64(32)).astype(np.int64), return_counts=True)
        return np.concatenate([small, big]), np.concatenate([small_pages, big_pages])

    def stats(self, site_stack: Callable[[Site], Stack], top: int) -> list[AllocationStat]:
        blocks = self.blocks
        uids, pages = self._touched_blocks()
        site_of = blocks.site[uids].astype(np.int64)
        nsites = len(blocks.sites)
        count = np.bincount(site_of, minlength=nsites)
        sizes = blocks.size[uids]
        block_bytes = np.bincount(site_of, weights=sizes.astype(np.float64), minlength=nsites)
        # the largest blocks of each site: by site, then size down, then address
        order = np.lexsort((blocks.addr[uids], -sizes.astype(np.int64), site_of))
        heads = np.searchsorted(site_of[order], np.arange(nsites))
        copies_of = np.zeros(nsites, np.int64)
        known = min(nsites, len(self.site_copies))
        copies_of[:known] = self.site_copies[:known]
        merged: dict[tuple[tuple[str, ...], str, str], list[Any]] = {}
        for site_id in np.flatnonzero((count > 0) | (copies_of > 0)).tolist():
            site = blocks.sites[site_id]
            first = order[heads[site_id] : heads[site_id] + min(LARGEST_BLOCKS, count[site_id])]
            largest = [
                BlockStat(addr=int(blocks.addr[u]), size=int(blocks.size[u]), copied_pages=int(n))
                for u, n in zip(uids[first].tolist(), pages[first].tolist(), strict=True)
            ]
            key = (site_stack(site).frames, site.origin, site.allocator)
            entry = merged.setdefault(key, [0, 0, 0, []])
            entry[0] += int(copies_of[site_id])
            entry[1] += int(count[site_id])
            entry[2] += int(block_bytes[site_id])
            entry[3].extend(largest)
        stats = []
        for (frames, origin, allocator), (copies, n, nbytes, largest) in merged.items():
            largest.sort(key=lambda b: (-b.size, b.addr))
            stats.append(
                AllocationStat(
                    site=frames,
                    origin=origin,
                    allocator=allocator,
                    blocks=n,
                    block_bytes=nbytes,
                    copies=copies,
                    largest=tuple(largest[:LARGEST_BLOCKS]),
                )
            )
        stats.sort(key=lambda s: (-s.copies, -s.block_bytes, s.site))
        return stats[:top]


class ExitCopies:
    """Each process' copies of the last `window_ns` (ts, stack id): at exit those within the
    window before the exit are counted, and a copy of an exited process drained late is
    checked against its exit time directly."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.recent: dict[int, RecentCopies] = {}

    def on_fork(self, ts_ns: int, child: int) -> None:
        recent = self.recent.get(child)
        if recent is not None and recent.exit_ts is not None and recent.exit_ts < ts_ns:
            del self.recent[child]  # a recycled pid: a new process

    def on_exit(self, ts_ns: int, pid: int) -> None:
        recent = self.recent.setdefault(pid, RecentCopies())
        recent.exit_ts = ts_ns
        lo = max(0, ts_ns - self.window_ns)
        for ts, stacks in recent.chunks:
            recent.count(ts, stacks, lo, ts_ns)
        recent.chunks.clear()

    def track(self, pid: int, ts: np.ndarray, stacks: np.ndarray) -> None:
        recent = self.recent.get(pid)
        if recent is None:
            recent = self.recent[pid] = RecentCopies()
        if recent.exit_ts is not None:  # drained after its exit: check it directly
            recent.count(ts, stacks, max(0, recent.exit_ts - self.window_ns), (1 << 64) - 1)
            return
        recent.chunks.append((ts.copy(), stacks.copy()))
        newest = int(ts.max())
        while recent.chunks and int(recent.chunks[0][0].max()) < newest - self.window_ns:
            recent.chunks.popleft()

    def forget(self, pid: int) -> None:
        self.recent.pop(pid, None)

    def copies(self) -> dict[int, int]:
        """Exit-time copies of every process that exited."""
        return {pid: r.copies for pid, r in self.recent.items() if r.exit_ts is not None}

    def of(self, pid: int) -> int:
        recent = self.recent.get(pid)
        return recent.copies if recent is not None and recent.exit_ts is not None else 0

    def writers(self, pid: int, stack_of: StackOf) -> list[tuple[Stack, int]]:
        """The writer stacks of a process' exit-time copies, most copies first, merged by
        frames (a stack is truncated if any of its ids was)."""
        recent = self.recent.get(pid)
        if recent is None:
            return []
        merged: dict[tuple[str, ...], list[Any]] = {}
        for sid, n in recent.writers.items():
            stack = stack_of(sid) if sid >= 0 else NO_STACK
            entry = merged.setdefault(stack.frames, [0, False])
            entry[0] += n
            entry[1] = entry[1] or stack.truncated
        return sorted(
            ((Stack(frames, truncated), n) for frames, (n, truncated) in merged.items()),
            key=lambda item: (-item[1], not item[0].frames, item[0].frames),
        )
