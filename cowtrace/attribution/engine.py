"""The attribution engine: the AttributionSink that turns classified faults into tables.

For every fault it answers: in which mapping (maps.py), in which malloc'd block (allocs.py),
written by which native stack (writers.py), and was it an exit-time copy.

Ordering.  Map snapshots (taken after a change, applied at the change's timestamp, see
maps.py), allocator calls, forks and execs change what a later fault resolves
to, so they are queued with their kernel timestamps and applied in ts order, interleaved with
the faults of each process: a fault of pid P is resolved after every change of P older than it
and before every newer one.  Resolving never changes state, so faults are resolved per pid in
vectorised segments between P's own changes.  A change newer than the newest fault drained so
far stays queued (a fault drained next time may still precede it) until `flush()`.

Exit-time copies.  Each process keeps its copies of the last `exit_window_s` (ts, stack id);
at exit those within the window before the exit are counted, and a copy of an exited process
drained late is checked against its exit time directly.

How the session uses it (see sink.py for the call order):

    sink = AttributionEngine(resolver, exit_window_s=options.exit_window_s,
                             event_fields=options.events_path is not None)
    sink.adopt(pid, parent, recover_heap=attach_mode_without_malloc_uprobes)  # each adoptee
    sink.on_fork / on_exec / on_exit(ts_ns, ...)        # lifecycle records
    sink.on_map_snapshots(snapshots); sink.on_alloc_events(alloc_records)  # maps.MapWatcher
    extra = sink.on_fault_events(fault_records)         # every drained fault batch
    events.write(fault_records, extra)                  # --events: one JSON suffix per record
    snapshot.attribution = sink.view()                  # each refresh
    write_summary(final, path, sink)                    # --json sections + per-process fields
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import deque
from typing import Any

import numpy as np

from cowtrace.attribution import glibc_heap
from cowtrace.attribution.allocs import (
    BlockRegistry,
    BlockTable,
    PageBlocks,
    Site,
    match_pages,
)
from cowtrace.attribution.maps import (
    PAGE,
    UNKNOWN_REGION,
    MapSnapshot,
    ProcessMap,
    RegionRegistry,
    read_proc_maps,
)
from cowtrace.attribution.sink import StackResolver
from cowtrace.attribution.view import (
    AllocationStat,
    AttributionView,
    BlockStat,
    RegionStat,
    WriterStat,
)
from cowtrace.attribution.writers import NO_STACK, Stack, StackCache
from cowtrace.kernel.abi import (
    ALLOC_EVENT_DTYPE,
    ALLOC_OP_FREE,
    ALLOCATOR_NAMES,
    KIND_COPY,
)

TOP_N = 50
QUEUE_LIMIT = 1 << 16  # queued changes before old ones are applied without waiting for faults
QUEUE_HORIZON_NS = 1_000_000_000
LARGEST_BLOCKS = 5
_PAGE_MASK = np.uint64(~(PAGE - 1) & 0xFFFFFFFFFFFFFFFF)

_COLUMNS = ("ts", "addr", "kind", "stack_id")  # the EVENT_DTYPE fields attribution reads

# Queued changes, in the order they sort at equal timestamps.
_FORK, _EXEC, _MAP, _UNTRACKED = 0, 1, 2, 3
_ALLOC_FIELDS = ["ts", "pid", "op", "addr", "old_addr", "size", "stack_id", "caller", "allocator"]
_ALLOC_DTYPE = ALLOC_EVENT_DTYPE[_ALLOC_FIELDS]


class _Recent:
    """A process' copies (ts, stack id) of the last window, kept for exit-time counting."""

    __slots__ = ("chunks", "exit_ts", "copies", "writers")

    def __init__(self) -> None:
        self.chunks: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self.exit_ts: int | None = None
        self.copies = 0
        self.writers: dict[int, int] = {}

    def count(self, ts: np.ndarray, stacks: np.ndarray, lo: int, hi: int) -> None:
        inside = (ts >= lo) & (ts <= hi)
        if not inside.any():
            return
        self.copies += int(inside.sum())
        ids, counts = np.unique(stacks[inside], return_counts=True)
        for sid, n in zip(ids.tolist(), counts.tolist(), strict=True):
            self.writers[sid] = self.writers.get(sid, 0) + n


class _Tally:
    """Counts per small non-negative id (region, stack id), and which pids contributed.

    Arrays indexed by id rather than dicts: a batch adds with one bincount.  Which ids a pid
    contributed to is kept sparse (its sorted distinct ids: stack ids reach 2 * STACK_ENTRIES,
    and a dense flag array per pid cost an agent 64 KiB for every worker it ever saw); a pid
    that `retire`s is folded into `retired`, a count per id, so that "processes" stays right
    while memory stays bounded by the pids still kept.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(64, np.int64)
        self.first_pid = np.full(64, -1, np.int64)
        self.retired = np.zeros(64, np.int64)  # per id: retired pids that contributed
        self.seen: dict[int, np.ndarray] = {}  # pid -> sorted distinct ids it contributed

    def _fit(self, size: int) -> None:
        if size > len(self.counts):
            grown = max(size, 2 * len(self.counts))
            extra = grown - len(self.counts)
            self.counts = np.concatenate([self.counts, np.zeros(extra, np.int64)])
            self.first_pid = np.concatenate([self.first_pid, np.full(extra, -1, np.int64)])
            self.retired = np.concatenate([self.retired, np.zeros(extra, np.int64)])

    def add(self, pid: int, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = ids.astype(np.int64)
        self._fit(int(ids.max()) + 1)
        distinct, counts = np.unique(ids, return_counts=True)
        self.counts[distinct] += counts
        fresh = ids[self.first_pid[ids] < 0]
        self.first_pid[fresh] = pid
        seen = self.seen.get(pid)
        self.seen[pid] = distinct if seen is None else np.union1d(seen, distinct)

    def retire(self, pid: int) -> np.ndarray:
        """Stop keeping which ids `pid` contributed to (counted in `retired`); its ids."""
        seen = self.seen.pop(pid, None)
        if seen is None:
            return np.zeros(0, np.int64)
        self.retired[seen] += 1
        return seen

    def processes(self) -> np.ndarray:
        """Per id, how many pids contributed (kept ones and retired ones)."""
        total = self.retired.copy()
        if self.seen:
            flat = np.concatenate(list(self.seen.values()))
            total += np.bincount(flat, minlength=len(total))[: len(total)]
        return total


def _any(seen: np.ndarray, ids: np.ndarray) -> bool:
    """Whether any of the sorted ids in `seen` is flagged in `ids` (a flag per id)."""
    inside = seen[seen < len(ids)]
    return bool(ids[inside].any())


class AttributionEngine:
    """Implements cowtrace.attribution.sink.AttributionSink.

    resolver: turns stack ids into frames (None: no writer or allocation stacks).
    exit_window_s: how long before a process' exit its copies count as exit-time copies.
    event_fields: build the --events attribution fields (only when an event log is written).
    read_proc: read /proc/PID/maps and file paths (off in unit tests with synthetic pids).
    """

    def __init__(
        self,
        resolver: StackResolver | None = None,
        *,
        exit_window_s: float = 0.5,
        event_fields: bool = False,
        read_proc: bool = True,
        top: int = TOP_N,
    ) -> None:
        self.resolver = resolver
        self.window_ns = int(exit_window_s * 1e9)
        self.event_fields = event_fields
        self.read_proc = read_proc
        self.top = top
        self.regions = RegionRegistry()
        self.blocks = BlockRegistry()
        self.maps: dict[int, ProcessMap] = {}
        self.tables: dict[int, BlockTable] = {}
        self.stacks = StackCache(resolver, self._is_code)
        self._queue: list[tuple[int, int, int, tuple[Any, ...]]] = []  # (ts, kind, seq, data)
        self._allocs: list[np.ndarray] = []  # pending allocator calls (applied after the
        self._pending_allocs = 0  # queued changes of the same ts)
        self._seq = itertools.count()
        # Aggregates.
        self._region_counts = np.zeros((64, 4), np.int64)  # region id x kind
        self._region_pids = _Tally()  # copies per region; counts unused (kinds are in the matrix)
        self._by_kind: dict[tuple[int, str], int] = {}
        self._writers = _Tally()  # copies per native stack id
        self._retired_writers: dict[Stack, int] = {}  # forgotten pids per writer (see forget)
        self._released_copies: dict[Stack, int] = {}  # copies of released stack ids
        self._stack_users = _Tally()  # every stack id in any record, by pid (release_stacks)
        self._site_copies = np.zeros(16, np.int64)
        # Which pages of which blocks were copied (by anyone): blocks of a page or less span at
        # most two pages, kept as two flags per uid; bigger ones as uid << 32 | page index.
        self._touched = np.zeros((2, 1024), bool)
        self._pairs: list[np.ndarray] = []
        self._recent: dict[int, _Recent] = {}
        self._alloc_text: dict[int, str] = {}  # --events pieces, cached
        self._stack_text: dict[int, str] = {}
        self._logged: set[str] = set()  # modules whose build-id the event log has
        self._last_pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (record, block uid)

    # ---- lifecycle -------------------------------------------------------------------------
    def adopt(self, pid: int, parent: int | None, *, recover_heap: bool) -> None:
        """A member found at attach: its map from /proc now, and its glibc heap if asked."""
        intervals = read_proc_maps(pid) if self.read_proc else None
        pmap = ProcessMap(self.regions, intervals)
        self.maps[pid] = pmap
        table = BlockTable(self.blocks)
        self.tables[pid] = table
        if recover_heap and intervals is not None:
            found = glibc_heap.walk(pid, intervals)
            if len(found.addrs):
                site = self.blocks.site_id(Site("recovered", "glibc", -1, 0, pid))
                uids = self.blocks.add_many(found.addrs, found.sizes, site)
                table.add_many(found.addrs, uids)

    def forget(self, pid: int) -> None:
        """Drop what is kept for a process long gone (the agent, after its grace period):
        a tracer that runs for weeks must not grow with every pid it ever saw.  Aggregates
        (regions, writers, allocation sites) keep its copies, and the number of processes
        behind each row still counts it."""
        self.maps.pop(pid, None)
        self.tables.pop(pid, None)
        self._recent.pop(pid, None)
        self._region_pids.retire(pid)
        self._stack_users.retire(pid)
        # Writers are merged by frames at view time: remember by frames which ones it wrote
        # with (each once), resolved now while the stack ids still say what they were.
        for stack in {self._writer_stack(sid) for sid in self._writers.retire(pid).tolist()}:
            self._retired_writers[stack] = self._retired_writers.get(stack, 0) + 1
        for key in [key for key in self._by_kind if key[0] == pid]:
            del self._by_kind[key]

    def release_stacks(self) -> list[int]:
        """Stack ids no kept process used (every user forgotten): their copies are folded
        into the writers by frames, and the ids are dropped here; the caller deletes them from
        the kernel's stack maps, which would otherwise fill up with the stacks of every family
        that ever ran (a new program image, new addresses).  An id the kernel hands out again
        later is then resolved afresh."""
        users = self._stack_users
        kept = [*users.seen.values(), [s.stack_id for s in self.blocks.sites]]
        used = np.flatnonzero(users.counts)
        released = np.setdiff1d(used, np.concatenate(kept).astype(np.int64))
        if len(released) == 0:
            return []
        writers = self._writers
        for sid in released[released < len(writers.counts)].tolist():
            copies = int(writers.counts[sid])
            if copies:
                stack = self._writer_stack(sid)
                self._released_copies[stack] = self._released_copies.get(stack, 0) + copies
        for tally in (writers, users):
            inside = released[released < len(tally.counts)]
            tally.counts[inside] = 0
            tally.first_pid[inside] = -1
            tally.retired[inside] = 0
        ids = released.tolist()
        self.stacks.drop(ids)
        for sid in ids:
            self._stack_text.pop(sid, None)
        return ids

    def known_stacks(self) -> np.ndarray:
        """Every stack id a record named and that is not released (see release_stacks)."""
        sites = np.array([s.stack_id for s in self.blocks.sites], np.int64)
        return np.union1d(np.flatnonzero(self._stack_users.counts), sites[sites >= 0])

    def on_fork(self, ts_ns: int, parent: int, child: int) -> None:
        recent = self._recent.get(child)
        if recent is not None and recent.exit_ts is not None and recent.exit_ts < ts_ns:
            del self._recent[child]  # a recycled pid: a new process
        self._push(ts_ns, _FORK, (parent, child))

    def on_exec(self, ts_ns: int, pid: int) -> None:
        self._push(ts_ns, _EXEC, (pid,))

    def on_exit(self, ts_ns: int, pid: int) -> None:
        """Applied at once: exits change no map, and late copies are checked on arrival."""
        recent = self._recent.setdefault(pid, _Recent())
        recent.exit_ts = ts_ns
        lo = max(0, ts_ns - self.window_ns)
        for ts, stacks in recent.chunks:
            recent.count(ts, stacks, lo, ts_ns)
        recent.chunks.clear()

    def allocations_untracked(self, ts_ns: int, pid: int) -> None:
        """The probes of `pid` came off (their cost budget): from `ts_ns` on its table is
        unknown, so its copies, and those of the children it forks later, match no block."""
        self._push(ts_ns, _UNTRACKED, (pid,))

    def on_map_snapshots(self, snapshots: list[MapSnapshot]) -> None:
        """Each replaces its process' map at the timestamp of the change that began it."""
        for snapshot in snapshots:
            self._push(snapshot.ts_ns, _MAP, (snapshot.pid, snapshot.intervals))

    def on_alloc_events(self, records: np.ndarray) -> None:
        """Kept as arrays (a malloc-heavy process sends hundreds of thousands a second) and
        applied in bulk between the other queued changes."""
        if len(records) == 0:
            return
        self._allocs.append(records[_ALLOC_FIELDS].copy())
        self._pending_allocs += len(records)
        if self._pending_allocs + len(self._queue) > QUEUE_LIMIT:
            self._apply_until(int(records["ts"].max()) - QUEUE_HORIZON_NS)

    def _push(self, ts: int, kind: int, data: tuple[Any, ...]) -> None:
        heapq.heappush(self._queue, (ts, kind, next(self._seq), data))

    # ---- applying queued changes -----------------------------------------------------------
    def _map(self, pid: int) -> ProcessMap:
        pmap = self.maps.get(pid)
        if pmap is None or not pmap.known:
            intervals = read_proc_maps(pid) if self.read_proc else None
            if pmap is None or intervals is not None:
                pmap = self.maps[pid] = ProcessMap(self.regions, intervals)
        return pmap

    def _table(self, pid: int) -> BlockTable:
        table = self.tables.get(pid)
        if table is None:
            table = self.tables[pid] = BlockTable(self.blocks)
        return table

    def _apply(self, kind: int, data: tuple[Any, ...]) -> None:
        if kind == _MAP:
            pid, intervals = data
            pmap = self.maps.get(pid)
            if pmap is None:
                self.maps[pid] = ProcessMap(self.regions, intervals)
            else:
                self.maps[pid] = pmap.replaced_by(intervals)
        elif kind == _FORK:
            parent, child = data
            self.maps[child] = self._map(parent).copy()
            self.tables[child] = self._table(parent).copy()
        elif kind == _EXEC:
            (pid,) = data
            self.maps[pid] = ProcessMap(self.regions)  # unknown: /proc is read on first use
            self.tables[pid] = BlockTable(self.blocks)
        elif kind == _UNTRACKED:
            (pid,) = data
            self.tables[pid] = BlockTable(self.blocks)

    @staticmethod
    def _owner(kind: int, data: tuple[Any, ...]) -> int:
        """The pid whose state the change alters (a fork reads the parent's)."""
        return data[0]

    def flush(self) -> None:
        """Apply every queued change (at the end, when no older fault can arrive)."""
        self._apply_until(None)

    def _apply_until(self, limit: int | None) -> None:
        """Apply queued changes up to `limit` ns (all with None).  Besides the end, used when
        a process mallocs a lot but copies nothing, so that the queue stays bounded: a fault
        drained later than a change QUEUE_HORIZON_NS newer than it is not expected (the
        session drains faults first, several times a second)."""
        allocs = self._take_allocs(limit)
        done = 0
        while self._queue and (limit is None or self._queue[0][0] <= limit):
            when, kind, _seq, data = heapq.heappop(self._queue)
            done = self._apply_allocs(allocs, done, when)
            self._apply(kind, data)
        self._apply_allocs(allocs, done, None)

    def _take_allocs(self, limit: int | None) -> np.ndarray:
        """Pending allocator calls up to `limit`, in ts order; the rest stay pending."""
        if not self._allocs:
            return np.zeros(0, _ALLOC_DTYPE)
        pending = np.concatenate(self._allocs) if len(self._allocs) > 1 else self._allocs[0]
        pending = pending[np.argsort(pending["ts"], kind="stable")]
        cut = len(pending) if limit is None else int(np.searchsorted(pending["ts"], limit, "right"))
        rest = pending[cut:]
        self._allocs = [rest] if len(rest) else []
        self._pending_allocs = len(rest)
        return pending[:cut]

    def _apply_allocs(self, allocs: np.ndarray, done: int, before: int | None) -> int:
        """Apply allocs[done:] older than `before` (all with None); returns the new `done`."""
        stop = len(allocs) if before is None else int(np.searchsorted(allocs["ts"], before, "left"))
        if stop <= done:
            return done
        batch = allocs[done:stop]
        new = (batch["op"] != ALLOC_OP_FREE) & (batch["addr"] != 0)
        uids = np.full(len(batch), -1, np.int64)
        if new.any():
            uids[new] = self.blocks.add_many(
                batch["addr"][new], batch["size"][new], self._site_ids(batch[new])
            )
        pids = batch["pid"]
        for pid in np.unique(pids).tolist():
            mine = np.flatnonzero(pids == pid)
            self._table(pid).apply_many(
                batch["op"][mine].tolist(),
                batch["addr"][mine].tolist(),
                batch["old_addr"][mine].tolist(),
                batch["size"][mine].tolist(),
                uids[mine].tolist(),
                batch["ts"][mine].tolist(),
            )
        return stop

    def _site_ids(self, batch: np.ndarray) -> np.ndarray:
        """Site id of each allocation: one Site per distinct (allocator, stack, caller)."""
        caller = np.where(batch["stack_id"] < 0, batch["caller"], np.uint64(0))
        keys = np.stack(
            [batch["allocator"].astype(np.int64), batch["stack_id"].astype(np.int64),
             caller.astype(np.int64)], axis=1,
        )  # fmt: skip
        unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        ids = np.array(
            [
                self.blocks.site_id(
                    Site(
                        "malloc", ALLOCATOR_NAMES.get(a, str(a)), sid, call, int(batch["pid"][at])
                    )  # fmt: skip
                )
                for (a, sid, call), at in zip(unique.tolist(), first.tolist(), strict=True)
            ],
            np.int32,
        )
        return ids[inverse.reshape(-1)]

    # ---- faults ----------------------------------------------------------------------------
    def on_fault_events(self, records: np.ndarray) -> list[str] | None:
        """Resolve a batch; returns the --events suffix of each record (see output/events.py)."""
        n = len(records)
        extras = np.full(n, "", dtype=object) if self.event_fields else None
        self._last_pairs = []  # every (record, block) overlap of this batch's copied pages
        if n == 0:
            return [] if extras is not None else None
        # contiguous columns: gathering them is much cheaper than gathering 48-byte records
        columns = {name: np.ascontiguousarray(records[name]) for name in _COLUMNS}
        ts = columns["ts"]
        pids = np.ascontiguousarray(records["pid"])
        order = np.lexsort((ts, pids))  # by pid, then time
        sorted_pids = pids[order]
        sorted_ts = ts[order]
        bounds = np.flatnonzero(np.r_[True, sorted_pids[1:] != sorted_pids[:-1], True])
        groups = {int(sorted_pids[a]): [a, b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)}
        newest = int(ts.max())
        # Changes up to the newest fault, in ts order; each first resolves its owner's older
        # faults against the state before it.
        allocs = self._take_allocs(newest)  # blocks carry their lifetimes: no cuts for these
        done = 0
        while self._queue and self._queue[0][0] <= newest:
            when, kind, _seq, data = heapq.heappop(self._queue)
            done = self._apply_allocs(allocs, done, when)
            owner = self._owner(kind, data)
            group = groups.get(owner)
            if group is not None and kind in (_EXEC, _MAP, _UNTRACKED):
                start, stop = group
                cut = start + int(np.searchsorted(sorted_ts[start:stop], when, side="left"))
                if cut > start:
                    self._resolve(owner, columns, order[start:cut], extras)
                    group[0] = cut
            self._apply(kind, data)
        self._apply_allocs(allocs, done, None)
        for pid, (start, stop) in groups.items():
            if stop > start:
                self._resolve(pid, columns, order[start:stop], extras)
        for table in self.tables.values():
            table.compact()
        return extras.tolist() if extras is not None else None

    def _resolve(
        self,
        pid: int,
        columns: dict[str, np.ndarray],
        index: np.ndarray,
        extras: np.ndarray | None,
    ) -> None:
        """Attribute one pid's faults (`index` into the columns) against its current state."""
        batch = {name: column[index] for name, column in columns.items()}
        addrs = batch["addr"]
        kinds = batch["kind"].astype(np.int64)
        pmap = self._map(pid)
        region, offset = pmap.resolve(addrs)
        has_addr = addrs != 0
        self._count_regions(pid, region[has_addr], kinds[has_addr])

        stack_ids = batch["stack_id"]
        self._stack_users.add(pid, stack_ids[stack_ids >= 0])
        is_copy = kinds == KIND_COPY
        copy_stacks = batch["stack_id"][is_copy]
        copy_ts = batch["ts"][is_copy]
        if len(copy_stacks):
            self._count_writers(pid, copy_stacks)
            self._track_exit(pid, copy_ts, copy_stacks)

        best = np.full(len(addrs), -1, np.int64)
        table = self.tables.get(pid)
        copy_pages = is_copy & has_addr
        if table is not None and len(table) and copy_pages.any():
            pages = addrs[copy_pages] & _PAGE_MASK
            matched = match_pages(table, pages, batch["ts"][copy_pages])
            best[copy_pages] = matched.best
            self._last_pairs.append((index[copy_pages][matched.pair_copy], matched.pair_uid))
            self._count_sites(matched.best)
            if len(matched.pair_uid):
                self._touch(matched)
        if extras is not None:
            self._event_fields(pid, batch, region, offset, has_addr, best, index, extras)

    def last_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every live allocator block overlapping a copied page of the last batch: (record
        index, block address, block size), one row per (copy, block) pair (the Python object
        resolver reads large objects from them)."""
        if not self._last_pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
        rows = np.concatenate([r for r, _ in self._last_pairs]).astype(np.int64)
        uids = np.concatenate([u for _, u in self._last_pairs]).astype(np.int64)
        return (
            rows,
            self.blocks.addr[uids].astype(np.uint64),
            self.blocks.size[uids].astype(np.int64),
        )

    def _touch(self, matched: PageBlocks) -> None:
        """Note copied (page, block) pairs; cheap flags for small blocks, sets for big ones."""
        if self.blocks.count > self._touched.shape[1]:
            grown = np.zeros((2, max(self.blocks.count, 2 * self._touched.shape[1])), bool)
            grown[:, : self._touched.shape[1]] = self._touched
            self._touched = grown
        small, uids, page = matched.pair_small, matched.pair_uid, matched.pair_page
        self._touched[page[small].astype(np.int64), uids[small]] = True
        if not small.all():
            big = ~small
            self._pairs.append((uids[big].astype(np.uint64) << np.uint64(32)) | page[big])

    def _count_regions(self, pid: int, region: np.ndarray, kinds: np.ndarray) -> None:
        if len(region) == 0:
            return
        rows = len(self.regions)
        if rows > len(self._region_counts):
            grown = np.zeros((max(rows, 2 * len(self._region_counts)), 4), np.int64)
            grown[: len(self._region_counts)] = self._region_counts
            self._region_counts = grown
        flat = np.bincount(region.astype(np.int64) * 4 + kinds, minlength=rows * 4)
        self._region_counts[:rows] += flat[: rows * 4].reshape(rows, 4)
        copied = region[kinds == KIND_COPY]
        if len(copied):
            self._region_pids.add(pid, copied)
            per_region = np.bincount(copied, minlength=rows)
            for rid in np.flatnonzero(per_region).tolist():  # metrics: per (pid, mapping kind)
                key = (pid, self.regions.regions[rid].kind)
                self._by_kind[key] = self._by_kind.get(key, 0) + int(per_region[rid])

    def _count_writers(self, pid: int, stacks: np.ndarray) -> None:
        self._writers.add(pid, stacks[stacks >= 0])

    def _track_exit(self, pid: int, ts: np.ndarray, stacks: np.ndarray) -> None:
        recent = self._recent.get(pid)
        if recent is None:
            recent = self._recent[pid] = _Recent()
        if recent.exit_ts is not None:  # drained after its exit: check it directly
            recent.count(ts, stacks, max(0, recent.exit_ts - self.window_ns), (1 << 64) - 1)
            return
        recent.chunks.append((ts.copy(), stacks.copy()))
        newest = int(ts.max())
        while recent.chunks and int(recent.chunks[0][0].max()) < newest - self.window_ns:
            recent.chunks.popleft()

    def _count_sites(self, best: np.ndarray) -> None:
        hit = best[best >= 0]
        if len(hit) == 0:
            return
        sites = self.blocks.site[hit]
        need = len(self.blocks.sites)
        if need > len(self._site_copies):
            grown = np.zeros(max(need, 2 * len(self._site_copies)), np.int64)
            grown[: len(self._site_copies)] = self._site_copies
            self._site_copies = grown
        counts = np.bincount(sites, minlength=need)
        self._site_copies[:need] += counts[:need]

    def _event_fields(
        self,
        pid: int,
        batch: dict[str, np.ndarray],
        region: np.ndarray,
        offset: np.ndarray,
        has_addr: np.ndarray,
        best: np.ndarray,
        index: np.ndarray,
        extras: np.ndarray,
    ) -> None:
        """The --events suffix of each fault: JSON text from cached pieces, one join each."""
        fragments = np.array(self.regions.fragments, dtype=object)
        mapping = fragments[np.where(has_addr, region, UNKNOWN_REGION)]
        offsets = [str(o) if o >= 0 else "null" for o in offset.tolist()]
        allocs = [self._alloc_json(uid) if uid >= 0 else "null" for uid in best.tolist()]
        sids, inverse = np.unique(batch["stack_id"], return_inverse=True)
        stacks = np.array([self._stack_json(int(sid), pid) for sid in sids], dtype=object)
        extras[index] = [
            f', {m}, "offset": {o}, "alloc": {a}, "stack": {st}'
            for m, o, a, st in zip(
                mapping.tolist(), offsets, allocs, stacks[inverse].tolist(), strict=True
            )
        ]

    def _alloc_json(self, uid: int) -> str:
        found = self._alloc_text.get(uid)
        if found is None:
            origin = self.blocks.sites[int(self.blocks.site[uid])].origin
            found = self._alloc_text[uid] = (
                f'{{"addr": {int(self.blocks.addr[uid])}, "size": {int(self.blocks.size[uid])}, '
                f'"origin": "{origin}"}}'
            )
        return found

    def _stack_json(self, sid: int, pid: int) -> str:
        found = self._stack_text.get(sid)
        if found is None:
            found = self._stack_text[sid] = self.stacks.get(sid, pid).json if sid >= 0 else "null"
            # Objects first named in a module+0xOFFSET frame: their build-ids go on this
            # stack's lines of this batch, once per log, for `cowtrace report` (events.py).
            modules = self.modules().get("modules", {})
            new = {name: info for name, info in modules.items() if name not in self._logged}
            if new:
                self._logged.update(new)
                return f'{found}, "modules": {json.dumps(new)}'
        return found

    # ---- helpers ---------------------------------------------------------------------------
    def _is_code(self, pid: int, addr: int) -> bool | None:
        pmap = self.maps.get(pid)
        if pmap is None or not pmap.known:
            return None
        return pmap.executable(addr)

    def _writer_stack(self, sid: int) -> Stack:
        first = self._writers.first_pid
        return self.stacks.get(sid, int(first[sid]) if sid < len(first) else 0)

    def _site_stack(self, site: Site) -> Stack:
        if site.origin == "recovered":
            return NO_STACK
        if site.stack_id >= 0:
            return self.stacks.get(site.stack_id, site.pid)
        return self.stacks.caller(site.caller, site.pid)

    # ---- views -----------------------------------------------------------------------------
    def _region_stats(self) -> list[RegionStat]:
        stats = []
        processes = self._region_pids.processes()
        rows = min(len(self.regions), len(self._region_counts))
        for rid in range(rows):
            _, copies, reuses, zeros = self._region_counts[rid].tolist()
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
        return stats[: self.top]

    def _writer_stats(self) -> list[WriterStat]:
        merged: dict[Stack, list[Any]] = {}
        tally = self._writers
        for sid in np.flatnonzero(tally.counts).tolist():
            stack = self._writer_stack(sid)
            entry = merged.setdefault(stack, [0, np.zeros(len(tally.counts), bool)])
            entry[0] += int(tally.counts[sid])
            entry[1][sid] = True
        stats = []
        for stack in self._released_copies:  # writers whose every stack id was released
            merged.setdefault(stack, [0, np.zeros(len(tally.counts), bool)])
        for stack, (copies, ids) in merged.items():
            # processes that wrote with any of the stack ids that resolve to these frames
            pids = sum(_any(seen, ids) for seen in tally.seen.values())
            pids += self._retired_writers.get(stack, 0)
            copies += self._released_copies.get(stack, 0)
            stats.append(
                WriterStat(
                    frames=stack.frames, copies=copies, processes=pids, truncated=stack.truncated
                )
            )
        stats.sort(key=lambda s: (-s.copies, s.frames))
        return stats[: self.top]

    def _unique_pairs(self) -> np.ndarray:
        if not self._pairs:
            return np.zeros(0, np.uint64)
        if len(self._pairs) > 1:
            self._pairs = [np.unique(np.concatenate(self._pairs))]
        else:
            self._pairs = [np.unique(self._pairs[0])]
        return self._pairs[0]

    def _touched_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """uids of blocks with a copied page, and how many of their pages were copied."""
        flags = self._touched[:, : self.blocks.count]
        small = np.flatnonzero(flags[0] | flags[1])
        small_pages = flags[0, small].astype(np.int64) + flags[1, small]
        pairs = self._unique_pairs()
        big, big_pages = np.unique((pairs >> np.uint64(32)).astype(np.int64), return_counts=True)
        return np.concatenate([small, big]), np.concatenate([small_pages, big_pages])

    def _allocation_stats(self) -> list[AllocationStat]:
        uids, pages = self._touched_blocks()
        site_of = self.blocks.site[uids].astype(np.int64)
        nsites = len(self.blocks.sites)
        blocks = np.bincount(site_of, minlength=nsites)
        sizes = self.blocks.size[uids]
        block_bytes = np.bincount(site_of, weights=sizes.astype(np.float64), minlength=nsites)
        # the largest blocks of each site: by site, then size down, then address
        order = np.lexsort((self.blocks.addr[uids], -sizes.astype(np.int64), site_of))
        heads = np.searchsorted(site_of[order], np.arange(nsites))
        copies_of = np.zeros(nsites, np.int64)
        known = min(nsites, len(self._site_copies))
        copies_of[:known] = self._site_copies[:known]
        merged: dict[tuple[tuple[str, ...], str, str], list[Any]] = {}
        for site_id in np.flatnonzero((blocks > 0) | (copies_of > 0)).tolist():
            site = self.blocks.sites[site_id]
            top = order[heads[site_id] : heads[site_id] + min(LARGEST_BLOCKS, blocks[site_id])]
            largest = [
                BlockStat(
                    addr=int(self.blocks.addr[u]),
                    size=int(self.blocks.size[u]),
                    copied_pages=int(n),
                )  # fmt: skip
                for u, n in zip(uids[top].tolist(), pages[top].tolist(), strict=True)
            ]
            key = (self._site_stack(site).frames, site.origin, site.allocator)
            entry = merged.setdefault(key, [0, 0, 0, []])
            entry[0] += int(copies_of[site_id])
            entry[1] += int(blocks[site_id])
            entry[2] += int(block_bytes[site_id])
            entry[3].extend(largest)
        stats = []
        for (frames, origin, allocator), (copies, count, nbytes, largest) in merged.items():
            largest.sort(key=lambda b: (-b.size, b.addr))
            stats.append(
                AllocationStat(
                    site=frames,
                    origin=origin,
                    allocator=allocator,
                    blocks=count,
                    block_bytes=nbytes,
                    copies=copies,
                    largest=tuple(largest[:LARGEST_BLOCKS]),
                )
            )
        stats.sort(key=lambda s: (-s.copies, -s.block_bytes, s.site))
        return stats[: self.top]

    def view(self) -> AttributionView | None:
        regions = self._region_stats()
        if not regions and not self._writers.counts.any() and not self._site_copies.any():
            return None
        return AttributionView(
            regions=tuple(regions),
            allocations=tuple(self._allocation_stats()),
            writers=tuple(self._writer_stats()),
            copies_by_kind=dict(self._by_kind),
            exit_copies={pid: r.copies for pid, r in self._recent.items() if r.exit_ts is not None},
        )

    def metrics_view(self) -> AttributionView:
        """Only what the metrics read (copies by mapping kind, exit-time copies): the agent's
        view at each refresh, without ranking every writer stack of every kept process."""
        return AttributionView(
            copies_by_kind=dict(self._by_kind),
            exit_copies={pid: r.copies for pid, r in self._recent.items() if r.exit_ts is not None},
        )

    def summary_sections(self) -> dict[str, Any]:
        """The --json sections (schema in cowtrace/output/summary.py)."""
        self.flush()
        return {
            "regions": [
                {
                    "kind": r.kind,
                    "name": r.name,
                    "section": r.section,
                    "copies": r.copies,
                    "copied_bytes": r.copied_bytes,
                    "reuses": r.reuses,
                    "zero_fills": r.zero_fills,
                    "processes": r.processes,
                }
                for r in self._region_stats()
            ],
            "allocations": [
                {
                    "site": list(a.site),
                    "origin": a.origin,
                    "allocator": a.allocator,
                    "blocks": a.blocks,
                    "block_bytes": a.block_bytes,
                    "copies": a.copies,
                    "copied_bytes": a.copied_bytes,
                    "largest": [
                        {"addr": b.addr, "size": b.size, "copied_pages": b.copied_pages}
                        for b in a.largest
                    ],
                }
                for a in self._allocation_stats()
            ],
            "writers": [
                {
                    "frames": list(w.frames),
                    "copies": w.copies,
                    "copied_bytes": w.copied_bytes,
                    "processes": w.processes,
                    "truncated": w.truncated,
                }
                for w in self._writer_stats()
            ],
        } | self.modules()

    def modules(self) -> dict[str, Any]:
        """`{"modules": ...}`, the objects of `module+0xOFFSET` frames (kernel/stacks.py), so
        `cowtrace report` can name them from debug files found later; `{}` when there are
        none."""
        modules = getattr(self.resolver, "modules", None)
        found = modules() if callable(modules) else {}
        return {"modules": found} if found else {}

    def exit_writers(self, pid: int) -> list[tuple[Stack, int]]:
        """The writer stacks of a process' exit-time copies, most copies first.

        Merged by frames: stack ids that resolve to the same frames (two addresses in one
        function, or one walk cut short and one not) are one writer here, as in the summary's
        `exit_writers`, which shows frames only (a stack is truncated if any of its ids was)."""
        recent = self._recent.get(pid)
        if recent is None:
            return []
        merged: dict[tuple[str, ...], list[Any]] = {}
        for sid, n in recent.writers.items():
            stack = self._writer_stack(sid) if sid >= 0 else NO_STACK
            entry = merged.setdefault(stack.frames, [0, False])
            entry[0] += n
            entry[1] = entry[1] or stack.truncated
        return sorted(
            ((Stack(frames, truncated), n) for frames, (n, truncated) in merged.items()),
            key=lambda item: (-item[1], not item[0].frames, item[0].frames),
        )

    def process_fields(self, pid: int) -> dict[str, Any]:
        recent = self._recent.get(pid)
        copies = recent.copies if recent is not None and recent.exit_ts is not None else 0
        return {
            "exit_copies": copies,
            "exit_writers": [
                {"frames": list(stack.frames), "copies": n}
                for stack, n in self.exit_writers(pid)[: self.top]
            ],
        }
