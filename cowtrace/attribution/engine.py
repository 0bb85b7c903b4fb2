"""The attribution engine: the AttributionSink that turns classified faults into tables.

For every fault it answers: in which mapping (maps.py), in which malloc'd block (allocs.py),
written by which native stack (writers.py), and was it an exit-time copy.

Ordering.  Map snapshots, allocator calls, forks and execs change what a later fault resolves
to: they wait in a ChangeQueue (changes.py) and are applied in kernel-timestamp order,
interleaved with the faults of each process: a fault of pid P is resolved after every change
of P older than it and before every newer one.  Resolving never changes state, so faults are
resolved per pid in vectorised segments between P's own changes.

What is added up (per mapping, writer stack, allocation site, exit-time copies) lives in
aggregates.py, the --events fields in event_fields.py; this module wires them to the faults.

How the session uses it (see sink.py for the call order):

    sink = AttributionEngine(resolver, exit_window_s=options.exit_window_s,
                             event_fields=options.events_path is not None)
    sink.adopt(pid, parent, recover_heap=attach_mode_without_malloc_uprobes)  # each adoptee
    sink.on_fork / on_exec / on_exit(ts_ns, ...)        # lifecycle records
    sink.on_map_snapshots(snapshots); sink.on_alloc_events(alloc_records)  # maps.MapWatcher
    fields = sink.on_fault_events(fault_records)        # every drained fault batch
    events.write(fault_records, fields)                 # --events: the typed fields per record
    snapshot.attribution = sink.view()                  # each refresh
    final.attribution = sink.view(final=True)           # the end: what write_summary writes
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from cowtrace.attribution import glibc_heap
from cowtrace.attribution.aggregates import BlockCopies, ExitCopies, RegionCopies, WriterCopies
from cowtrace.attribution.allocs import BlockRegistry, BlockTable, Site, match_pages
from cowtrace.attribution.changes import CUTS, EXEC, FORK, UNTRACKED, ChangeQueue
from cowtrace.attribution.event_fields import BatchFields, EventFields
from cowtrace.attribution.maps import PAGE, MapSnapshot, ProcessMap, RegionRegistry, read_proc_maps
from cowtrace.attribution.sink import StackResolver
from cowtrace.attribution.writers import NO_STACK, Stack, StackCache
from cowtrace.kernel.abi import KIND_COPY
from cowtrace.results import AttributionView, FaultAttribution, ProcessExit, WriterStat

TOP_N = 50
_PAGE_MASK = np.uint64(~(PAGE - 1) & 0xFFFFFFFFFFFFFFFF)

_COLUMNS = ("ts", "addr", "kind", "stack_id")  # the EVENT_DTYPE fields attribution reads


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
        self.event_fields = event_fields
        self.read_proc = read_proc
        self.top = top
        self.regions = RegionRegistry()
        self.blocks = BlockRegistry()
        self.changes = ChangeQueue(self.regions, self.blocks, read_proc)
        self.maps: dict[int, ProcessMap] = self.changes.maps
        self.tables: dict[int, BlockTable] = self.changes.tables
        self.stacks = StackCache(resolver, self._is_code)
        self._regions = RegionCopies(self.regions)
        self._writers = WriterCopies()
        self._blocks = BlockCopies(self.blocks)
        self._exits = ExitCopies(int(exit_window_s * 1e9))
        self._fields = EventFields(self.regions, self.blocks, self.stacks, self.modules)
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
        self.changes.forget(pid)
        self._exits.forget(pid)
        self._regions.retire(pid)
        self._writers.retire(pid, self._writer_stack)

    def release_stacks(self) -> list[int]:
        """Stack ids no kept process used (every user forgotten): their copies are folded
        into the writers by frames, and the ids are dropped here; the caller deletes them from
        the kernel's stack maps, which would otherwise fill up with the stacks of every family
        that ever ran (a new program image, new addresses).  An id the kernel hands out again
        later is then resolved afresh."""
        sites = [s.stack_id for s in self.blocks.sites]
        ids = self._writers.release(sites, self._writer_stack).tolist()
        self.stacks.drop(ids)
        self._fields.drop_stacks(ids)
        return ids

    def known_stacks(self) -> np.ndarray:
        """Every stack id a record named and that is not released (see release_stacks)."""
        sites = np.array([s.stack_id for s in self.blocks.sites], np.int64)
        return np.union1d(np.flatnonzero(self._writers.users.counts), sites[sites >= 0])

    def on_fork(self, ts_ns: int, parent: int, child: int) -> None:
        self._exits.on_fork(ts_ns, child)
        self.changes.push(ts_ns, FORK, (parent, child))

    def on_exec(self, ts_ns: int, pid: int) -> None:
        self.changes.push(ts_ns, EXEC, (pid,))

    def on_exit(self, ts_ns: int, pid: int) -> None:
        """Applied at once: exits change no map, and late copies are checked on arrival."""
        self._exits.on_exit(ts_ns, pid)

    def allocations_untracked(self, ts_ns: int, pid: int) -> None:
        """The probes of `pid` came off (their cost budget): from `ts_ns` on its table is
        unknown, so its copies, and those of the children it forks later, match no block."""
        self.changes.push(ts_ns, UNTRACKED, (pid,))

    def on_map_snapshots(self, snapshots: list[MapSnapshot]) -> None:
        """Each replaces its process' map at the timestamp of the change that began it."""
        self.changes.map_snapshots(snapshots)

    def on_alloc_events(self, records: np.ndarray) -> None:
        self.changes.alloc_events(records)

    def flush(self) -> None:
        """Apply every queued change (at the end, when no older fault can arrive)."""
        self.changes.apply_until(None)

    # ---- faults ----------------------------------------------------------------------------
    def on_fault_events(self, records: np.ndarray) -> FaultAttribution | None:
        """Resolve a batch; returns each record's --events fields when asked (`event_fields`)
        (output/events.py writes them)."""
        n = len(records)
        fields = self._fields.batch(n) if self.event_fields else None
        self._last_pairs = []  # every (record, block) overlap of this batch's copied pages
        if n == 0:
            return fields.done() if fields is not None else None
        # contiguous columns: gathering them is much cheaper than gathering 48-byte records
        columns = {name: np.ascontiguousarray(records[name]) for name in _COLUMNS}
        ts = columns["ts"]
        pids = np.ascontiguousarray(records["pid"])
        order = np.lexsort((ts, pids))  # by pid, then time
        sorted_pids = pids[order]
        sorted_ts = ts[order]
        bounds = np.flatnonzero(np.r_[True, sorted_pids[1:] != sorted_pids[:-1], True])
        groups = {int(sorted_pids[a]): [a, b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)}

        def before_change(when: int, kind: int, owner: int) -> None:
            """A change of `owner`'s state: first resolve its faults older than the change
            against the state before it."""
            group = groups.get(owner)
            if group is not None and kind in CUTS:
                start, stop = group
                cut = start + int(np.searchsorted(sorted_ts[start:stop], when, side="left"))
                if cut > start:
                    self._resolve(owner, columns, order[start:cut], fields)
                    group[0] = cut

        # Changes up to the newest fault, in ts order.
        self.changes.apply_until(int(ts.max()), before_change)
        for pid, (start, stop) in groups.items():
            if stop > start:
                self._resolve(pid, columns, order[start:stop], fields)
        for table in self.tables.values():
            table.compact()
        return fields.done() if fields is not None else None

    def _resolve(
        self,
        pid: int,
        columns: dict[str, np.ndarray],
        index: np.ndarray,
        fields: BatchFields | None,
    ) -> None:
        """Attribute one pid's faults (`index` into the columns) against its current state."""
        batch = {name: column[index] for name, column in columns.items()}
        addrs = batch["addr"]
        kinds = batch["kind"].astype(np.int64)
        pmap = self.changes.map(pid)
        region, offset = pmap.resolve(addrs)
        has_addr = addrs != 0
        self._regions.add(pid, region[has_addr], kinds[has_addr])

        stack_ids = batch["stack_id"]
        self._writers.users.add(pid, stack_ids[stack_ids >= 0])
        is_copy = kinds == KIND_COPY
        copy_stacks = stack_ids[is_copy]
        copy_ts = batch["ts"][is_copy]
        if len(copy_stacks):
            self._writers.writers.add(pid, copy_stacks[copy_stacks >= 0])
            self._exits.track(pid, copy_ts, copy_stacks)

        best = np.full(len(addrs), -1, np.int64)
        table = self.tables.get(pid)
        copy_pages = is_copy & has_addr
        if table is not None and len(table) and copy_pages.any():
            pages = addrs[copy_pages] & _PAGE_MASK
            matched = match_pages(table, pages, batch["ts"][copy_pages])
            best[copy_pages] = matched.best
            self._last_pairs.append((index[copy_pages][matched.pair_copy], matched.pair_uid))
            self._blocks.count_sites(matched.best)
            if len(matched.pair_uid):
                self._blocks.touch(matched)
        if fields is not None:
            fields.fill(pid, stack_ids, region, offset, has_addr, best, index)

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

    # ---- helpers ---------------------------------------------------------------------------
    def _is_code(self, pid: int, addr: int) -> bool | None:
        pmap = self.maps.get(pid)
        if pmap is None or not pmap.known:
            return None
        return pmap.executable(addr)

    def _writer_stack(self, sid: int) -> Stack:
        return self.stacks.get(sid, self._writers.first_pid(sid))

    def _site_stack(self, site: Site) -> Stack:
        if site.origin == "recovered":
            return NO_STACK
        if site.stack_id >= 0:
            return self.stacks.get(site.stack_id, site.pid)
        return self.stacks.caller(site.caller, site.pid)

    # ---- views ----------------------------------------------------------------------------
    def view(self, *, final: bool = False) -> AttributionView | None:
        """The tables ranked now, None when they are empty.

        final: the end of tracing (the summary's view): every queued change applied first,
        and what only the summary shows added (each process' exit-time copies and their
        writers, the modules of `module+0xOFFSET` frames); never None."""
        if final:
            self.flush()
        view = AttributionView(
            regions=tuple(self._regions.stats(self.top)),
            allocations=tuple(self._blocks.stats(self._site_stack, self.top)),
            writers=tuple(self._writers.stats(self._writer_stack, self.top)),
            copies_by_kind=dict(self._regions.by_kind),
            exit_copies=self._exits.copies(),
        )
        if final:
            return replace(view, exits=self._process_exits(), modules=self.modules())
        return view if view.tables else None

    def metrics_view(self) -> AttributionView:
        """Only what the metrics read (copies by mapping kind, exit-time copies): the agent's
        view at each refresh, without ranking every writer stack of every kept process."""
        return AttributionView(
            copies_by_kind=dict(self._regions.by_kind), exit_copies=self._exits.copies()
        )

    def modules(self) -> dict[str, dict[str, Any]]:
        """The objects of `module+0xOFFSET` frames (kernel/stacks.py), so `cowtrace report`
        can name them from debug files found later; empty when there are none."""
        modules = getattr(self.resolver, "modules", None)
        return modules() if callable(modules) else {}

    def exit_writers(self, pid: int) -> list[tuple[Stack, int]]:
        """The writer stacks of a process' exit-time copies, most copies first.

        Merged by frames: stack ids that resolve to the same frames (two addresses in one
        function, or one walk cut short and one not) are one writer here, as in the summary's
        `exit_writers`, which shows frames only (a stack is truncated if any of its ids was)."""
        return self._exits.writers(pid, self._writer_stack)

    def _process_exits(self) -> dict[int, ProcessExit]:
        """Exit-time copies and their writers (at most `top`) of every process still kept."""
        return {
            pid: ProcessExit(
                copies=self._exits.of(pid),
                writers=tuple(
                    WriterStat(stack.frames, n, None, stack.truncated)
                    for stack, n in self.exit_writers(pid)[: self.top]
                ),
            )
            for pid in self._exits.recent
        }
