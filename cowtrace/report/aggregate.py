"""Aggregate an `--events` log into report tables, in one streaming pass.

Logs reach millions of lines, so nothing per line is kept: counters live in dicts keyed by what
a report groups on (pid, mapping, allocation site, stack), and each copied page of a block is
remembered only once (a set of page addresses per block, so `copied_pages` counts distinct pages
as the summary does). Only copies count towards allocations, writers and the flame graph;
mappings count copies, reuses and zero-fills, as the summary's `regions` do.

A section appears only if some line carries its field (``mapping``, ``alloc``, ``stack``,
``pystack``): a log from the core tracer alone has none, and the report then says so instead
of showing empty tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cowtrace.errors import CowtraceError
from cowtrace.host.memory import PAGE_SIZE
from cowtrace.report.model import ProcessRow, ReportData, StackSample, Totals
from cowtrace.results import (
    AllocationStat,
    BlockStat,
    PythonWriterStat,
    RegionStat,
    WriterStat,
)

KINDS = ("copy", "reuse", "zero_fill")
_SLOTS = {kind: slot for slot, kind in enumerate(KINDS)}
LARGEST_BLOCKS = 5
"""Blocks listed per allocation site, largest first (as the summary's ``largest``)."""

# Names for mappings whose event line gives a kind but no path.
_UNNAMED = {"heap": "[heap]", "stack": "[stack]"}


@dataclass
class _Region:
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])  # copies, reuses, zero-fills
    copier_pids: set[int] = field(default_factory=set)


@dataclass
class _Site:
    copies: int = 0
    blocks: dict[tuple[int, int], set[int]] = field(default_factory=dict)  # (addr, size) -> pages


@dataclass
class _Stack:
    copies: int = 0
    pids: set[int] = field(default_factory=set)
    truncated: bool = False


class EventAggregator:
    """Feed it decoded event objects with :meth:`add`; :meth:`report` builds the tables."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines = 0
        self.totals = Totals()
        self.per_pid: dict[int, list[int]] = {}  # pid -> [copies, reuses, zero_fills]
        self.regions: dict[tuple[str, str, str | None], _Region] = {}
        self.sites: dict[tuple[tuple[str, ...], str, str | None], _Site] = {}
        self.writers: dict[tuple[str, ...], _Stack] = {}
        self.py_writers: dict[tuple[tuple[str, ...], str | None, str | None], int] = {}
        self.samples: dict[tuple[tuple[str, ...] | None, tuple[str, ...] | None, bool], int] = {}
        self.seen_mapping = self.seen_alloc = self.seen_stack = self.seen_pystack = False
        self._known_stacks: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.modules: dict[str, Any] = {}
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def add(self, event: Any, lineno: int) -> None:
        """Count one event; CowtraceError (with the line number) when it is not one.

        This runs once per line of logs with millions of lines: type checks are by identity
        and a stack is validated only the first time it is seen (an equal tuple was checked).
        """
        if type(event) is not dict:
            raise self._bad(lineno, "not a JSON object")
        kind = event.get("kind")
        slot = _SLOTS.get(kind) if type(kind) is str else None
        if slot is None:
            raise self._bad(lineno, f"unknown kind {kind!r}")
        pid = event.get("pid")
        if type(pid) is not int:
            raise self._bad(lineno, "no integer pid")
        self.lines += 1
        ts = event.get("ts")
        if type(ts) is float or type(ts) is int:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
        counts = self.per_pid.get(pid)
        if counts is None:
            counts = self.per_pid[pid] = [0, 0, 0]
        counts[slot] += 1
        t = self.totals
        if slot == 0:
            t.copies += 1
            if event.get("source") == "file":
                t.file_copies += 1
            if event.get("via") == "gup":
                t.gup_copies += 1
        elif slot == 1:
            t.reuses += 1
        else:
            t.zero_fills += 1
        if "mapping" in event:
            self.seen_mapping = True
            self._add_region(event, slot, pid, lineno)
        if slot != 0:
            return
        if "alloc" in event:
            self.seen_alloc = True
            if event["alloc"] is not None:
                self._add_alloc(event["alloc"], event.get("addr"), lineno)
        if "modules" in event:
            self._add_modules(event["modules"], lineno)
        stack = pystack = None
        if "stack" in event:
            self.seen_stack = True
            stack = self._frames(event["stack"], "stack", lineno)
        if "pystack" in event:
            self.seen_pystack = True
            pystack = self._frames(event["pystack"], "pystack", lineno)
        if not (self.seen_stack or self.seen_pystack):
            return
        truncated = event.get("truncated") is True
        if stack is not None:
            entry = self.writers.get(stack)
            if entry is None:
                entry = self.writers[stack] = _Stack()
            entry.copies += 1
            entry.pids.add(pid)
            entry.truncated = entry.truncated or truncated
        if pystack is not None:
            key = (pystack, stack[0] if stack else None, event.get("category"))
            self.py_writers[key] = self.py_writers.get(key, 0) + 1
        sample = (stack, pystack, truncated)
        self.samples[sample] = self.samples.get(sample, 0) + 1

    def _add_modules(self, modules: Any, lineno: int) -> None:
        """A line's "modules" (the build-ids of its module+0xOFFSET frames, given once per
        log): kept for report/resymbolize.py."""
        if type(modules) is not dict or not all(type(v) is dict for v in modules.values()):
            raise self._bad(lineno, "modules is not an object of objects")
        self.modules.update(modules)

    def _frames(self, frames: Any, key: str, lineno: int) -> tuple[str, ...] | None:
        """The stack as a tuple (None for null), checked to be strings on first sight."""
        if frames is None:
            return None
        if type(frames) is not list:
            raise self._bad(lineno, f"{key} is not a list of strings")
        try:
            frames = tuple(frames)
            known = self._known_stacks.get(frames)
        except TypeError:  # an unhashable element: a list or object, not a frame name
            raise self._bad(lineno, f"{key} is not a list of strings") from None
        if known is None:
            if not all(type(f) is str for f in frames):
                raise self._bad(lineno, f"{key} is not a list of strings")
            known = self._known_stacks[frames] = frames
        return known

    def _add_region(self, event: dict, slot: int, pid: int, lineno: int) -> None:
        kind = event["mapping"]
        if kind is not None and not isinstance(kind, str):
            raise self._bad(lineno, "mapping is not a string")
        name = event.get("path")
        if kind is None:
            kind, name = "unknown", ""
        elif not isinstance(name, str) or not name:
            name = _UNNAMED.get(kind, "")
        section = event.get("section")
        key = (kind, name, section if isinstance(section, str) else None)
        region = self.regions.get(key)
        if region is None:
            region = self.regions[key] = _Region()
        region.counts[slot] += 1
        if slot == 0:
            region.copier_pids.add(pid)

    def _add_alloc(self, alloc: Any, addr: Any, lineno: int) -> None:
        if not isinstance(alloc, dict):
            raise self._bad(lineno, "alloc is not an object")
        block_addr, size = alloc.get("addr"), alloc.get("size")
        if not isinstance(block_addr, int) or not isinstance(size, int):
            raise self._bad(lineno, "alloc has no integer addr and size")
        site = alloc.get("site")
        site_key = tuple(site) if isinstance(site, list) else ()
        allocator = alloc.get("allocator")
        key = (site_key, str(alloc.get("origin") or "malloc"), allocator)
        entry = self.sites.get(key)
        if entry is None:
            entry = self.sites[key] = _Site()
        entry.copies += 1
        pages = entry.blocks.get((block_addr, size))
        if pages is None:
            pages = entry.blocks[(block_addr, size)] = set()
        if isinstance(addr, int):
            pages.add(addr // PAGE_SIZE)

    def _bad(self, lineno: int, what: str) -> CowtraceError:
        return CowtraceError(f"{self.path}:{lineno}: {what}: expected a cowtrace event line")

    def report(self) -> ReportData:
        """The tables, largest first (ties by key, so the output is deterministic)."""
        t = self.totals
        t.copied_bytes = t.copies * PAGE_SIZE
        processes = [
            ProcessRow(
                pid=pid,
                copies=c[0],
                copied_bytes=c[0] * PAGE_SIZE,
                reuses=c[1],
                zero_fills=c[2],
            )
            for pid, c in self.per_pid.items()
        ]
        processes.sort(key=lambda p: (-p.copies, p.pid))
        duration = None
        if self.first_ts is not None and self.last_ts is not None:
            duration = self.last_ts - self.first_ts
        return ReportData(
            source="events",
            path=self.path,
            totals=t,
            processes=processes,
            duration_s=duration,
            regions=self._regions() if self.seen_mapping else None,
            allocations=self._allocations() if self.seen_alloc else None,
            writers=self._writers() if self.seen_stack else None,
            python_writers=self._python_writers() if self.seen_pystack else None,
            samples=self._samples() if (self.seen_stack or self.seen_pystack) else None,
            events=self.lines,
            modules=self.modules or None,
        )

    def _regions(self) -> list[RegionStat]:
        rows = [
            RegionStat(
                kind=kind,
                name=name,
                section=section,
                copies=r.counts[0],
                copied_bytes=r.counts[0] * PAGE_SIZE,
                reuses=r.counts[1],
                zero_fills=r.counts[2],
                processes=len(r.copier_pids),
            )
            for (kind, name, section), r in self.regions.items()
        ]
        rows.sort(key=lambda r: (-r.copies, -r.reuses - r.zero_fills, r.kind, r.name))
        return rows

    def _allocations(self) -> list[AllocationStat]:
        rows = []
        for (site, origin, allocator), s in self.sites.items():
            blocks = [
                BlockStat(addr=a, size=size, copied_pages=len(pages))
                for (a, size), pages in s.blocks.items()
            ]
            largest = sorted(blocks, key=lambda b: (-b.size, b.addr))[:LARGEST_BLOCKS]
            rows.append(
                AllocationStat(
                    site=tuple(site),
                    origin=origin,
                    allocator=allocator if isinstance(allocator, str) else None,
                    blocks=len(blocks),
                    block_bytes=sum(b.size for b in blocks),
                    copies=s.copies,
                    copied_bytes=s.copies * PAGE_SIZE,
                    largest=tuple(largest),
                )
            )
        rows.sort(key=lambda r: (-r.copies, r.origin, r.site))
        return rows

    def _writers(self) -> list[WriterStat]:
        rows = [
            WriterStat(
                frames=tuple(frames),
                copies=w.copies,
                copied_bytes=w.copies * PAGE_SIZE,
                processes=len(w.pids),
                truncated=w.truncated,
            )
            for frames, w in self.writers.items()
        ]
        rows.sort(key=lambda r: (-r.copies, r.frames))
        return rows

    def _python_writers(self) -> list[PythonWriterStat]:
        rows = [
            PythonWriterStat(
                frames=tuple(frames),
                native_leaf=leaf,
                category=category if isinstance(category, str) else None,
                copies=n,
                copied_bytes=n * PAGE_SIZE,
            )
            for (frames, leaf, category), n in self.py_writers.items()
        ]
        rows.sort(key=lambda r: (-r.copies, r.frames, r.native_leaf or ""))
        return rows

    def _samples(self) -> list[StackSample]:
        return [
            StackSample(
                native=native, python=python, truncated=truncated, copied_bytes=n * PAGE_SIZE
            )
            for (native, python, truncated), n in self.samples.items()
        ]


def aggregate_events(lines: Iterable[str], path: str) -> ReportData:
    """Stream an event log (any iterable of lines, e.g. an open file) into report data."""
    aggregator = EventAggregator(path)
    # raw_decode skips json.loads' two whitespace regex matches per line; what follows the
    # object must then be checked by hand (only the newline may).
    decode = json.JSONDecoder().raw_decode
    add = aggregator.add
    for lineno, line in enumerate(lines, 1):
        try:
            event, end = decode(line)
        except json.JSONDecodeError:
            if not line.strip():
                continue
            try:
                event, end = decode(line.strip())
            except json.JSONDecodeError:
                raise aggregator._bad(lineno, "not JSON") from None
            line = line.strip()
        if end != len(line) and not line[end:].isspace():
            raise aggregator._bad(lineno, "not JSON (text after the object)")
        add(event, lineno)
    return aggregator.report()
