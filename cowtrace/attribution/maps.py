"""Each member's memory map as it was at each moment, and vectorised address resolution.

A map is seeded from /proc/PID/maps (attach, or lazily after exec), copied at fork and then
kept up to date from the kernel's map-change records (mmap, munmap, mremap, brk, mprotect)
applied in timestamp order, so a copy is resolved against the map as it stood when it
happened, not as /proc shows it later.

Intervals are kept as a sorted Python list (map changes are rare next to faults); lookups use
numpy arrays rebuilt only when the map changed, and resolve a whole batch of addresses with one
`searchsorted`.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, replace

import numpy as np

from cowtrace.attribution import elf
from cowtrace.kernel.records import (
    MAP_OP_BRK,
    MAP_OP_MMAP,
    MAP_OP_MPROTECT,
    MAP_OP_MREMAP,
    MAP_OP_MUNMAP,
)

PAGE = 4096
PROT_WRITE, PROT_EXEC = 0x2, 0x4
MAP_SHARED, MAP_ANONYMOUS = 0x01, 0x20
ERROR_FLOOR = (1 << 64) - 4095  # a syscall return value at or above this is -errno
UNKNOWN_REGION = 0  # an address in no known mapping


def page_up(value: int) -> int:
    return (value + PAGE - 1) & ~(PAGE - 1)


@dataclass(frozen=True)
class Region:
    """What the tables group copies by: kind, name and section (view.RegionStat's key)."""

    kind: str
    name: str
    section: str | None

    @property
    def path(self) -> str | None:
        """The --events "path": a file or shm object or anon name; None for heap/stack/anon."""
        return self.name if self.kind in ("file", "shm", "anon_named") and self.name else None


class RegionRegistry:
    """Interns regions as small integers, so batches aggregate with np.bincount."""

    def __init__(self) -> None:
        self.regions: list[Region] = [Region("other", "[unknown]", None)]
        self._ids: dict[Region, int] = {self.regions[0]: UNKNOWN_REGION}
        self.fragments: list[str] = ['"mapping": null, "path": null']  # --events JSON, per id

    def intern(self, kind: str, name: str, section: str | None = None) -> int:
        region = Region(kind, name, section)
        found = self._ids.get(region)
        if found is not None:
            return found
        self._ids[region] = len(self.regions)
        self.regions.append(region)
        self.fragments.append(f'"mapping": "{kind}", "path": {json.dumps(region.path)}')
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


def parse_maps(text: str) -> list[Interval]:
    """Intervals of a /proc/PID/maps text (unannotated: no sections, no region ids)."""
    found = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        perms = parts[1]
        path = parts[5].strip() if len(parts) == 6 else ""
        kind, name = classify(path, perms[3] == "s")
        offset = int(parts[2], 16) if kind == "file" else -1
        found.append(Interval(int(lo, 16), int(hi, 16), kind, name, offset, perms[2] == "x"))
    return found


def read_proc_maps(pid: int) -> list[Interval] | None:
    """The process' map now, or None when it is unknown: the process is gone, or exiting (a
    zombie's maps file reads empty; taken as known, that empty map made every frame of its
    children's stacks "in no executable mapping", so their writer stacks came out empty)."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            return parse_maps(handle.read()) or None
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def mapped_path(pid: int, start: int, end: int) -> str | None:
    """The file behind a mapping now, via /proc/PID/map_files (root only) or /proc/PID/maps."""
    try:
        return os.readlink(f"/proc/{pid}/map_files/{start:x}-{end:x}")
    except OSError:
        pass
    for interval in read_proc_maps(pid) or ():
        if interval.start <= start < interval.end and interval.name.startswith("/"):
            return interval.name
    return None


class ProcessMap:
    """One member's map: sorted, non-overlapping intervals with region ids."""

    def __init__(self, registry: RegionRegistry, intervals: list[Interval] | None = None):
        self.registry = registry
        self._items: list[Interval] = []
        self._starts: list[int] = []
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._exec: tuple[np.ndarray, np.ndarray] | None = None
        self.known = intervals is not None
        for interval in intervals or ():
            self.insert(interval)

    def copy(self) -> ProcessMap:
        """The child's map at fork: the same intervals (immutable, so shared safely)."""
        clone = ProcessMap(self.registry)
        clone._items = list(self._items)
        clone._starts = list(self._starts)
        clone._arrays, clone._exec, clone.known = self._arrays, self._exec, self.known
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
        for piece in self._annotate(interval):
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
                base = replace(interval, kind="file", name=prev.name, offset=offset)
        pieces: list[tuple[int, int, str | None]] = [(base.start, base.end, None)]
        if base.kind == "file" and base.offset >= 0:
            for section, lo_off, hi_off in elf.section_ranges(base.name):
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

    def apply(self, record: np.void, path: str | None = None) -> None:
        """One MAP_EVENT_DTYPE record; `path` is the file of a file mmap, if known."""
        op = int(record["op"])
        start, length = int(record["start"]), int(record["length"])
        if op == MAP_OP_MMAP:
            if start >= ERROR_FLOOR or length == 0:
                return
            flags, prot = int(record["flags"]), int(record["prot"])
            executable = bool(prot & PROT_EXEC)
            end = start + page_up(length)
            if int(record["fd"]) < 0 or flags & MAP_ANONYMOUS:
                kind, name = classify("", bool(flags & MAP_SHARED))
                self.insert(Interval(start, end, kind, name, -1, executable))
            else:
                kind, name = classify(path or "file", bool(flags & MAP_SHARED))
                offset = int(record["pgoff"]) if kind == "file" else -1
                self.insert(Interval(start, end, kind, name, offset, executable))
        elif op == MAP_OP_MUNMAP:
            self.remove(start, start + page_up(length))
        elif op == MAP_OP_MREMAP:
            new_start, new_length = int(record["new_start"]), int(record["new_length"])
            if new_start >= ERROR_FLOOR:
                return
            self.move(start, page_up(length), new_start, page_up(new_length))
        elif op == MAP_OP_BRK:
            old, new = page_up(start), page_up(int(record["new_start"]))
            if int(record["new_start"]) >= ERROR_FLOOR or new == old:
                return
            if new > old:
                self.insert(Interval(old, new, "heap", "[heap]", -1, False))
            else:
                self.remove(new, old)
        elif op == MAP_OP_MPROTECT:
            executable = bool(int(record["prot"]) & PROT_EXEC)
            parts = self.remove(start, start + page_up(length))
            for part in parts:
                self.insert(replace(part, executable=executable))

    def move(self, old: int, old_len: int, new: int, new_len: int) -> None:
        """mremap: the old range's intervals, shifted to `new`, cut or grown to `new_len`."""
        parts = self.remove(old, old + old_len)
        self.remove(new, new + new_len)
        if not parts:
            return
        delta = new - old
        end = new + new_len
        moved = []
        for part in parts:
            if part.start + delta >= end:
                break
            shifted = replace(part, start=part.start + delta, end=min(part.end + delta, end))
            moved.append(shifted)
        last = moved[-1]
        if new_len > old_len and last.end == parts[-1].end + delta:
            moved[-1] = replace(last, end=end)
        for part in moved:
            index = bisect.bisect_left(self._starts, part.start)
            self._items.insert(index, part)
            self._starts.insert(index, part.start)
        self._changed()

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
        """Region id (UNKNOWN_REGION if unmapped) and file offset (-1) of each address."""
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

    def executable(self, addr: int) -> bool:
        """Whether `addr` lies in an executable mapping (a believable return address)."""
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
