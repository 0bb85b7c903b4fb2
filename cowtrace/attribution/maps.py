"""Each member's memory map as it was at each moment, and vectorised address resolution.

A map is seeded from /proc/PID/maps (attach, or lazily after exec) and copied at fork.  The
kernel does not say what changed (that would need syscall tracepoints, which tax every task on
the host): it sends one PE_MAPS record when a member's map starts changing (a write acquisition
of its mmap_lock, see the BPF program), and MapWatcher re-reads /proc/PID/maps at the next
drain.  The engine applies that snapshot at the timestamp of the change record, in order with
the faults, forks and execs, so a copy made before the change resolves against the map before
it.  An address the snapshot does not hold resolves against the map before it (a mapping
unmapped between the change and the re-read).

Limits: a mapping made and unmapped between two re-reads is never seen (its copies are
[unknown]); an address range unmapped and mapped again with something else in that window is
attributed to the newer mapping, for faults after the change record.

Intervals are kept as a sorted Python list (map changes are rare next to faults); lookups use
numpy arrays rebuilt only when the map changed, and resolve a whole batch of addresses with one
`searchsorted`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from cowtrace.host import elf, procmaps, rootfs
from cowtrace.host.memory import PAGE_SIZE
from cowtrace.kernel.abi import PE_EXEC, PE_FORK, PE_FREE, PE_MAPS
from cowtrace.results import UNMAPPED, Region

PAGE = PAGE_SIZE
UNKNOWN_REGION = 0  # the index of UNMAPPED: an address in no known mapping


class RegionRegistry:
    """Interns regions as small integers, so batches aggregate with np.bincount."""

    def __init__(self) -> None:
        self.regions: list[Region] = [UNMAPPED]
        self._ids: dict[Region, int] = {UNMAPPED: UNKNOWN_REGION}

    def intern(self, kind: str, name: str, section: str | None = None) -> int:
        region = Region(kind, name, section)
        found = self._ids.get(region)
        if found is not None:
            return found
        self._ids[region] = len(self.regions)
        self.regions.append(region)
        return self._ids[region]

    def __len__(self) -> int:
        return len(self.regions)


@dataclass(frozen=True)
class Interval:
    start: int
    end: int
    kind: str
    name: str
    offset: int  # file offset at `start` (continued into a binary's .bss), -1 if none
    executable: bool
    region: int = UNKNOWN_REGION
    # Where cowtrace opens the file `name` (a container's member: under /proc/PID/root, see
    # host/rootfs.py); "" for `name` itself.  Not part of the interval's identity.
    file: str = field(default="", compare=False)

    def cut(self, lo: int, hi: int) -> Interval:
        """The part of this interval in [lo, hi), offsets carried along."""
        lo, hi = max(lo, self.start), min(hi, self.end)
        offset = self.offset + (lo - self.start) if self.offset >= 0 else -1
        return replace(self, start=lo, end=hi, offset=offset)


def classify(path: str, shared: bool) -> tuple[str, str]:
    """(kind, name) of a mapping from its /proc/PID/maps path and sharing."""
    if path == "[heap]":
        return "heap", path
    if path.startswith("[stack"):
        return "stack", "[stack]"
    if path.startswith("[anon:"):
        return "anon_named", path
    if path.startswith("[anon_shmem:"):
        return "shm", path
    if shared or path.startswith(("/dev/shm/", "/SYSV")):
        return "shm", path or "[shared anon]"
    if path == "":
        return "anon", ""
    if path.startswith("/dev/zero"):
        return "anon", ""
    if path.startswith("["):
        return "other", path
    return "file", path


def intervals_of(lines: list[procmaps.MapLine], root: str = "") -> list[Interval]:
    """Intervals of a process' maps lines (unannotated: no sections, no region ids); `root`:
    the process' root_prefix (host/rootfs.py), where its files are opened."""
    found = []
    for line in lines:
        kind, name = classify(line.path, line.shared)
        offset = line.offset if kind == "file" else -1
        file = root + name if root and kind == "file" else ""
        found.append(Interval(line.start, line.end, kind, name, offset, line.executable, file=file))
    return found


def parse_maps(text: str) -> list[Interval]:
    """Intervals of a /proc/PID/maps text."""
    return intervals_of(procmaps.parse(text))


def read_proc_maps(pid: int) -> list[Interval] | None:
    """The process' intervals, or None when they cannot be known: the process is gone, or it
    is a zombie, whose maps file is empty.  A live process always has a mapping (its stack):
    taking an exited worker's empty file for its map made every address of its program
    "not code" and cut its writer stacks to nothing (seen on the workers fixture)."""
    root = rootfs.root_prefix(pid)  # first: a process gone meanwhile has no maps either
    return intervals_of(procmaps.read(pid), root) or None


class ProcessMap:
    """One member's map: sorted, non-overlapping intervals with region ids.

    `previous`: the map this snapshot replaced, for addresses this one does not hold (one
    level only, so maps do not chain up)."""

    def __init__(
        self,
        registry: RegionRegistry,
        intervals: list[Interval] | None = None,
        *,
        annotated: dict[tuple[Interval, Interval | None], list[Interval]] | None = None,
    ):
        self.registry = registry
        self._items: list[Interval] = []
        self._starts: list[int] = []
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._exec: tuple[np.ndarray, np.ndarray] | None = None
        self.known = intervals is not None
        self.previous: ProcessMap | None = None
        # The pieces each interval of `intervals` was annotated into, keyed by the interval and
        # the one right before it (a .bss tail depends on it): a snapshot re-read after a
        # change is mostly the same intervals, and annotating costs more than everything else.
        self._annotated: dict[tuple[Interval, Interval | None], list[Interval]] = {}
        before: Interval | None = None
        for interval in intervals or ():
            adjacent = before if before is not None and before.end == interval.start else None
            key = (interval, adjacent)
            pieces = annotated.get(key) if annotated is not None else None
            in_order = not self._items or self._items[-1].end <= interval.start
            if not in_order:
                self.remove(interval.start, interval.end)
            if pieces is None:
                pieces = self._annotate(interval)
            if in_order:  # /proc lists them in address order: append
                self._items.extend(pieces)
                self._starts.extend(piece.start for piece in pieces)
            else:
                self._place(pieces)
            self._annotated[key] = pieces
            before = interval

    def replaced_by(self, intervals: list[Interval]) -> ProcessMap:
        """The map after a change: `intervals` (a /proc snapshot), falling back to this one."""
        new = ProcessMap(self.registry, intervals, annotated=self._annotated)
        if self.known:
            new.previous = self.copy()
            new.previous.previous = None
        return new

    def copy(self) -> ProcessMap:
        """The child's map at fork: the same intervals (immutable, so shared safely)."""
        clone = ProcessMap(self.registry)
        clone._items = list(self._items)
        clone._starts = list(self._starts)
        clone._arrays, clone._exec, clone.known = self._arrays, self._exec, self.known
        clone.previous = self.previous
        clone._annotated = self._annotated  # never changed after construction: shared
        return clone

    @property
    def intervals(self) -> list[Interval]:
        return list(self._items)

    # ---- changes ---------------------------------------------------------------------------
    def _changed(self) -> None:
        self._arrays = None
        self._exec = None

    def remove(self, lo: int, hi: int) -> list[Interval]:
        """Unmap [lo, hi); returns the removed parts (for mremap), in address order."""
        if hi <= lo:
            return []
        first = max(0, bisect.bisect_right(self._starts, lo) - 1)
        last = bisect.bisect_left(self._starts, hi)
        keep_before, removed, keep_after = [], [], []
        for interval in self._items[first:last]:
            if interval.end <= lo or interval.start >= hi:
                (keep_before if interval.end <= lo else keep_after).append(interval)
                continue
            if interval.start < lo:
                keep_before.append(interval.cut(interval.start, lo))
            removed.append(interval.cut(lo, hi))
            if interval.end > hi:
                keep_after.append(interval.cut(hi, interval.end))
        if not removed:
            return []
        replacement = keep_before + keep_after
        self._items[first:last] = replacement
        self._starts[first:last] = [i.start for i in replacement]
        self._changed()
        return removed

    def insert(self, interval: Interval) -> None:
        """Map `interval` (replacing what was there), annotated with sections and region."""
        self.remove(interval.start, interval.end)
        self._place(self._annotate(interval))

    def _place(self, pieces: list[Interval]) -> None:
        """Put annotated pieces where nothing is mapped."""
        for piece in pieces:
            index = bisect.bisect_left(self._starts, piece.start)
            self._items.insert(index, piece)
            self._starts.insert(index, piece.start)
        self._changed()

    def _annotate(self, interval: Interval) -> list[Interval]:
        """Split a binary's mapping (or the anonymous .bss tail after it) by section."""
        if interval.region != UNKNOWN_REGION:
            return [interval]  # already annotated (moved by mremap)
        base = interval
        if interval.kind == "anon":
            index = bisect.bisect_left(self._starts, interval.start) - 1
            prev = self._items[index] if index >= 0 else None
            if prev is not None and prev.end == interval.start and prev.kind == "file":
                offset = prev.offset + (prev.end - prev.start)
                base = replace(interval, kind="file", name=prev.name, offset=offset, file=prev.file)
        pieces: list[tuple[int, int, str | None]] = [(base.start, base.end, None)]
        if base.kind == "file" and base.offset >= 0:
            for section, lo_off, hi_off in elf.section_ranges(base.file or base.name):
                lo = base.start + lo_off - base.offset
                hi = base.start + hi_off - base.offset
                pieces = _carve(pieces, lo, hi, section)
        if base is not interval and all(section is None for _, _, section in pieces):
            base, pieces = interval, [(interval.start, interval.end, None)]  # not the .bss tail
        out = []
        for lo, hi, section in pieces:
            region = self.registry.intern(base.kind, base.name, section)
            out.append(replace(base.cut(lo, hi), region=region))
        return out

    # ---- lookups ---------------------------------------------------------------------------
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """starts, ends, region ids, offsets (uint64, uint64, int32, int64)."""
        if self._arrays is None:
            items = self._items
            self._arrays = (
                np.fromiter((i.start for i in items), np.uint64, len(items)),
                np.fromiter((i.end for i in items), np.uint64, len(items)),
                np.fromiter((i.region for i in items), np.int32, len(items)),
                np.fromiter((i.offset for i in items), np.int64, len(items)),
            )
        return self._arrays

    def resolve(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Region id (UNKNOWN_REGION if unmapped) and file offset (-1) of each address; an
        address this map does not hold is looked up in the previous one."""
        region, offset = self._resolve_here(addrs)
        if self.previous is not None:
            missing = region == UNKNOWN_REGION
            if missing.any():
                region[missing], offset[missing] = self.previous._resolve_here(addrs[missing])
        return region, offset

    def _resolve_here(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts, ends, regions, offsets = self.arrays()
        if len(starts) == 0:
            return np.zeros(len(addrs), np.int32), np.full(len(addrs), -1, np.int64)
        index = np.searchsorted(starts, addrs, side="right") - 1
        clipped = np.maximum(index, 0)
        inside = (index >= 0) & (addrs < ends[clipped])
        region = np.where(inside, regions[clipped], UNKNOWN_REGION).astype(np.int32)
        base = offsets[clipped]
        delta = (addrs - starts[clipped]).astype(np.int64)
        offset = np.where(inside & (base >= 0), base + delta, -1)
        return region, offset

    def holds(self, addr: int) -> bool:
        """Whether some mapping of this map (not the previous one) covers `addr`."""
        index = bisect.bisect_right(self._starts, addr) - 1
        return index >= 0 and addr < self._items[index].end

    def executable(self, addr: int) -> bool:
        """Whether `addr` lies in an executable mapping (a believable return address); an
        address this map does not hold is looked up in the previous one."""
        if self.previous is not None and not self.holds(addr):
            return self.previous.executable(addr)
        if self._exec is None:
            spans = [(i.start, i.end) for i in self._items if i.executable]
            self._exec = (
                np.array([s for s, _ in spans], np.uint64),
                np.array([e for _, e in spans], np.uint64),
            )
        starts, ends = self._exec
        index = int(np.searchsorted(starts, np.uint64(addr), side="right")) - 1
        return index >= 0 and addr < int(ends[index])


def _carve(
    pieces: list[tuple[int, int, str | None]], lo: int, hi: int, section: str
) -> list[tuple[int, int, str | None]]:
    """Label the pages of [lo, hi) in unlabelled pieces with `section`.

    Sections are not page-aligned, so each bound is rounded to the nearest page: a page is
    labelled by the section that covers most of it (a copy reports just its page).
    """
    lo = (lo + PAGE // 2) & ~(PAGE - 1)
    hi = (hi + PAGE // 2) & ~(PAGE - 1)
    if lo >= hi:  # less than half a page: no page is mostly this section
        return pieces
    out = []
    for start, end, label in pieces:
        if label is not None or hi <= start or lo >= end:
            out.append((start, end, label))
            continue
        if start < lo:
            out.append((start, lo, None))
        out.append((max(start, lo), min(end, hi), section))
        if end > hi:
            out.append((hi, end, None))
    return out


@dataclass(frozen=True)
class MapSnapshot:
    """A member's map as /proc showed it after a change that began at `ts_ns`."""

    ts_ns: int
    pid: int
    intervals: list[Interval]


class MapRecord(Protocol):
    """What MapWatcher reads of a kernel lifecycle record (kernel/tracer.py ProcRecord)."""

    type: int
    ts_ns: int
    pid: int
    ppid: int


def _code_files(intervals: Iterable[Interval]) -> frozenset[tuple[int, int, str]]:
    return frozenset(
        (i.start, i.end, i.name) for i in intervals if i.executable and i.kind == "file"
    )


class MapWatcher:
    """Turns the kernel's PE_MAPS records into /proc/PID/maps snapshots.

    `rearm(pid)` (the tracer's clear_map_changed) is called just before each read, so a change
    made while reading sends a new record.  Also tells which processes mapped new code (an
    executable file mapping the previous snapshot did not have: the loader after an exec, a
    dlopen), for the stack resolver and the allocator probes."""

    def __init__(self, rearm: Callable[[int], None], *, read: bool = True) -> None:
        self._rearm = rearm
        self.read_proc = read  # False (attribution off): no re-read, and no re-arming either
        self._pending: dict[int, int] = {}  # pid -> ts of its first change not read yet
        self._code: dict[int, frozenset[tuple[int, int, str]]] = {}

    def on_records(self, records: Iterable[MapRecord]) -> None:
        """Fold lifecycle records in: PE_MAPS marks a map to re-read; forks, execs and frees
        keep the code each process is known to map."""
        for record in records:
            if record.type == PE_MAPS:
                self._pending.setdefault(record.pid, record.ts_ns)
            elif record.type == PE_FORK:
                known = self._code.get(record.ppid)
                if known is not None:
                    self._code[record.pid] = known
            elif record.type == PE_EXEC:
                self._code[record.pid] = frozenset()  # what the loader maps next is new code
                # The kernel sets up the new image's stack and binary before the exec record:
                # a change marked then is read after the exec, so it is the new image's map,
                # applied with the exec (which would otherwise reset it to unknown).
                if record.pid in self._pending:
                    self._pending[record.pid] = max(self._pending[record.pid], record.ts_ns)
            elif record.type == PE_FREE:
                self._code.pop(record.pid, None)
                self._pending.pop(record.pid, None)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def read(self) -> tuple[list[MapSnapshot], list[int]]:
        """Snapshots of the maps that changed, and the pids that mapped new code.  A process
        gone or a zombie (empty maps) gives no snapshot: its last known map stays."""
        pending, self._pending = self._pending, {}
        snapshots: list[MapSnapshot] = []
        mapped_code: list[int] = []
        if not self.read_proc:
            return snapshots, mapped_code
        for pid, ts in sorted(pending.items(), key=lambda item: item[1]):
            self._rearm(pid)
            intervals = read_proc_maps(pid)
            if intervals is None:
                continue
            snapshots.append(MapSnapshot(ts, pid, intervals))
            code = _code_files(intervals)
            known = self._code.get(pid)
            if known is not None and not code <= known:
                mapped_code.append(pid)
            self._code[pid] = code
        return snapshots, mapped_code
