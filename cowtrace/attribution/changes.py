"""What changes how a process' later faults resolve, applied in kernel-timestamp order.

Map snapshots (taken after a change, applied at the change's timestamp, see maps.py),
allocator calls, forks, execs and allocator probes coming off change what a later fault
resolves to, so they are queued with their kernel timestamps and applied in ts order.  This
module owns that queue and the state it changes: each process' map (maps.ProcessMap) and block
table (allocs.BlockTable).  The engine (engine.py) interleaves the faults of each process with
it: a fault of pid P is resolved after every change of P older than it and before every newer
one.  A change newer than the newest fault drained so far stays queued (a fault drained next
time may still precede it) until `apply_until(None)`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from cowtrace.attribution.allocs import BlockRegistry, BlockTable, Site
from cowtrace.attribution.maps import MapSnapshot, ProcessMap, RegionRegistry, read_proc_maps
from cowtrace.kernel.abi import ALLOC_EVENT_DTYPE, ALLOC_OP_FREE, ALLOCATOR_NAMES

QUEUE_LIMIT = 1 << 16  # queued changes before old ones are applied without waiting for faults
QUEUE_HORIZON_NS = 1_000_000_000

# Queued changes, in the order they sort at equal timestamps.
FORK, EXEC, MAP, UNTRACKED = 0, 1, 2, 3
# Changes after which the owner's older faults must be resolved first (a fork changes the
# child, whose faults all come after it).
CUTS = (EXEC, MAP, UNTRACKED)
_ALLOC_FIELDS = ["ts", "pid", "op", "addr", "old_addr", "size", "stack_id", "caller", "allocator"]
_ALLOC_DTYPE = ALLOC_EVENT_DTYPE[_ALLOC_FIELDS]

# Called before a queued change is applied: (its ts, its kind, the pid whose state it alters).
BeforeChange = Callable[[int, int, int], None]


class ChangeQueue:
    """The queued changes and each process' map and block table."""

    def __init__(self, regions: RegionRegistry, blocks: BlockRegistry, read_proc: bool) -> None:
        self.regions = regions
        self.blocks = blocks
        self.read_proc = read_proc
        self.maps: dict[int, ProcessMap] = {}
        self.tables: dict[int, BlockTable] = {}
        self._queue: list[tuple[int, int, int, tuple[Any, ...]]] = []  # (ts, kind, seq, data)
        self._allocs: list[np.ndarray] = []  # pending allocator calls (applied after the
        self._pending_allocs = 0  # queued changes of the same ts)
        self._seq = itertools.count()

    # ---- queueing --------------------------------------------------------------------------
    def push(self, ts: int, kind: int, data: tuple[Any, ...]) -> None:
        heapq.heappush(self._queue, (ts, kind, next(self._seq), data))

    def map_snapshots(self, snapshots: list[MapSnapshot]) -> None:
        """Each replaces its process' map at the timestamp of the change that began it."""
        for snapshot in snapshots:
            self.push(snapshot.ts_ns, MAP, (snapshot.pid, snapshot.intervals))

    def alloc_events(self, records: np.ndarray) -> None:
        """Kept as arrays (a malloc-heavy process sends hundreds of thousands a second) and
        applied in bulk between the other queued changes."""
        if len(records) == 0:
            return
        self._allocs.append(records[_ALLOC_FIELDS].copy())
        self._pending_allocs += len(records)
        if self._pending_allocs + len(self._queue) > QUEUE_LIMIT:
            self.apply_until(int(records["ts"].max()) - QUEUE_HORIZON_NS)

    # ---- a process' state ------------------------------------------------------------------
    def map(self, pid: int) -> ProcessMap:
        """`pid`'s map, read from /proc when it is not known yet (exec, a late adoption)."""
        pmap = self.maps.get(pid)
        if pmap is None or not pmap.known:
            intervals = read_proc_maps(pid) if self.read_proc else None
            if pmap is None or intervals is not None:
                pmap = self.maps[pid] = ProcessMap(self.regions, intervals)
        return pmap

    def table(self, pid: int) -> BlockTable:
        table = self.tables.get(pid)
        if table is None:
            table = self.tables[pid] = BlockTable(self.blocks)
        return table

    def forget(self, pid: int) -> None:
        self.maps.pop(pid, None)
        self.tables.pop(pid, None)

    # ---- applying --------------------------------------------------------------------------
    def apply_until(self, limit: int | None, before_change: BeforeChange | None = None) -> None:
        """Apply queued changes and allocator calls up to `limit` ns (all with None), in ts
        order; `before_change` is called before each change.  Besides the faults' own drains
        (the engine) and the end, used when a process mallocs a lot but copies nothing, so
        that the queue stays bounded: a fault drained later than a change QUEUE_HORIZON_NS
        newer than it is not expected (the session drains faults first, several times a
        second)."""
        allocs = self._take_allocs(limit)  # blocks carry their lifetimes: no cuts for these
        done = 0
        while self._queue and (limit is None or self._queue[0][0] <= limit):
            when, kind, _seq, data = heapq.heappop(self._queue)
            done = self._apply_allocs(allocs, done, when)
            if before_change is not None:
                before_change(when, kind, data[0])  # data[0]: the pid whose state changes
            self._apply(kind, data)
        self._apply_allocs(allocs, done, None)

    def _apply(self, kind: int, data: tuple[Any, ...]) -> None:
        if kind == MAP:
            pid, intervals = data
            pmap = self.maps.get(pid)
            if pmap is None:
                self.maps[pid] = ProcessMap(self.regions, intervals)
            else:
                self.maps[pid] = pmap.replaced_by(intervals)
        elif kind == FORK:
            parent, child = data
            self.maps[child] = self.map(parent).copy()
            self.tables[child] = self.table(parent).copy()
        elif kind == EXEC:
            (pid,) = data
            self.maps[pid] = ProcessMap(self.regions)  # unknown: /proc is read on first use
            self.tables[pid] = BlockTable(self.blocks)
        elif kind == UNTRACKED:
            (pid,) = data
            self.tables[pid] = BlockTable(self.blocks)

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
            self.table(pid).apply_many(
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
