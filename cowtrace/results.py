"""The typed results of a trace: what attribution found, as plain immutable tables.

The engine (attribution/engine.py) and the Python tracker build an AttributionView on every
refresh; the live view, the summary (output/summary.py) and the metrics read it, and
`cowtrace report` loads a summary or an event log back into the same row types
(report/load.py), so one renderer serves each section.  Nothing here computes.  Sizes are in
pages where the kernel counts pages (copies) and in bytes where the allocator counts bytes
(block sizes).  A row's `copied_bytes` is copies × the page size unless given: a file read
back keeps the figure it carries (written on a host whose page size may differ).  Fields a
file may lack are Optional (None: the file does not say).

Per drained fault batch, what each record resolved to (FaultAttribution, FaultPythonStacks)
is typed here too: output/events.py alone turns it into the --events JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cowtrace.host.memory import PAGE_SIZE

UNSET = -1  # `copied_bytes` not given: copies × PAGE_SIZE
# The `python_pages` class of the copied pages of CPython members left unexamined for Python
# types because their resolution was over its time budget (cowtrace/python/budget.py).
OVER_BUDGET = "over_budget"


class _CopiedBytes:
    """`copied_bytes` from `copies` unless the row was given it (a file read back)."""

    copies: int
    copied_bytes: int

    def __post_init__(self) -> None:
        if self.copied_bytes == UNSET:
            object.__setattr__(self, "copied_bytes", self.copies * PAGE_SIZE)


# Mapping kinds, as reported everywhere (JSON "kind", metric label "mapping").
MAPPING_KINDS = ("heap", "stack", "anon", "anon_named", "file", "shm", "other")


@dataclass(frozen=True)
class RegionStat(_CopiedBytes):
    """Copies in one mapping (grouped by kind and name across the family)."""

    kind: str  # one of MAPPING_KINDS
    name: str  # "[heap]", "[stack]", "[anon:NAME]", a file path, "" for plain anonymous memory
    section: str | None  # ".data", ".bss" for a binary's writable sections, else None
    copies: int
    reuses: int
    zero_fills: int
    processes: int  # members that copied in it
    copied_bytes: int = UNSET


@dataclass(frozen=True)
class BlockStat:
    """One allocated block, as copied pages saw it."""

    addr: int
    size: int
    copied_pages: int  # distinct pages of the block copied (across the family)


@dataclass(frozen=True)
class AllocationStat(_CopiedBytes):
    """Copies attributed to the blocks of one allocation site (allocation stack)."""

    site: tuple[str, ...]  # allocation stack, innermost frame first; () when recovered
    origin: str  # "malloc" (seen by uprobes) or "recovered" (found walking the heap at attach)
    allocator: str | None  # "glibc", "jemalloc", "tcmalloc"; None: the file does not say
    blocks: int  # live blocks of this site that copies touched
    block_bytes: int  # their total size
    copies: int  # copies attributed to this site
    largest: tuple[BlockStat, ...] = ()
    copied_bytes: int = UNSET


@dataclass(frozen=True)
class WriterStat(_CopiedBytes):
    """Copies made by one native writer stack."""

    frames: tuple[str, ...]  # innermost first, symbolized
    copies: int
    processes: int | None  # None: not counted (a process' exit writers)
    truncated: bool  # the walk ended early (no frame pointers): only the leading frames are real
    copied_bytes: int = UNSET


@dataclass(frozen=True)
class ProcessExit:
    """Copies one process made in its last exit window before it exited (waste: the memory is
    freed right after), and the writer stacks of those copies, most first."""

    copies: int
    writers: tuple[WriterStat, ...] = ()


@dataclass(frozen=True)
class PythonWriterStat(_CopiedBytes):
    """Copies made under one Python stack (CPython members)."""

    frames: tuple[str, ...]  # "function (file:line)", innermost first
    native_leaf: str | None  # the native function the write happened in
    category: str | None  # "gc", "refcount", "allocator", "teardown", "other"
    copies: int
    copied_bytes: int = UNSET


@dataclass(frozen=True)
class PythonRemedy:
    """What one usual remedy would have saved, from the categories of the copies measured.

    gc_freeze: `gc.freeze()` in the master before forking moves every object it holds to the
    permanent generation, which collections never visit: the copies whose write was the
    collector's (gc category) are the pages it avoids.  data_out_of_objects: the copies made by
    the interpreter's own writes to objects (refcount category: reference counts and fields of
    objects the worker reads) are what moving read-only data out of Python objects (arrays,
    mmap'd files, shared memory) avoids.  Each page is copied once per process, by its first
    write, so a page saved from the collector might still be copied by a later write: the
    figures are what the remedy removes at most, exact when nothing else writes those pages."""

    remedy: str  # "gc_freeze", "data_out_of_objects"
    action: str  # what to do, in words
    copies: int  # copies the remedy would have avoided
    share: float  # of the copies of CPython members (0..1)

    @property
    def copied_bytes(self) -> int:
        return self.copies * PAGE_SIZE


@dataclass(frozen=True)
class AttributionView:
    regions: tuple[RegionStat, ...] = ()
    allocations: tuple[AllocationStat, ...] = ()
    writers: tuple[WriterStat, ...] = ()
    python_writers: tuple[PythonWriterStat, ...] = ()
    python_remedies: tuple[PythonRemedy, ...] = ()
    why: tuple[str, ...] = ()  # one-line explanations ("garbage collection (41% of copies)...")
    # For metrics: copies per (pid, mapping kind), and exit-time copies per pid.
    copies_by_kind: dict[tuple[int, str], int] = field(default_factory=dict)
    exit_copies: dict[int, int] = field(default_factory=dict)
    python_types: tuple[PythonTypeStat, ...] = ()  # family, most copied bytes first
    python_types_by_pid: dict[int, tuple[PythonTypeStat, ...]] = field(default_factory=dict)
    python_pages: dict[str, int] = field(default_factory=dict)  # copied pages by class
    # The end of a trace only (the engine's final view): each process' exit-time copies and
    # their writers, by pid; None in the live views and when attribution is off.
    exits: dict[int, ProcessExit] | None = None
    # `module+0xOFFSET` frames name these objects: {basename: {"path", "build_id", "loads"}}
    # (kernel/stacks.py), so `cowtrace report` can name the frames from debug files later.
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    # CPython members were traced for Python stacks: the summary's Python sections are
    # written, even empty.
    python: bool = False

    @property
    def tables(self) -> bool:
        """Anything in the engine's tables (mappings, allocation sites, writer stacks)."""
        return bool(self.regions or self.allocations or self.writers)


@dataclass(frozen=True)
class PythonTypeStat:
    """Copied bytes apportioned to the Python objects of one type (cowtrace/python/
    copied_types.py): bytes of its objects on copied pages, by the category of the write."""

    type: str  # "pkg.mod.Class", "dict"
    objects: int | None  # objects whose block starts on a copied page
    copied_bytes: int
    pages: int | None  # copied pages holding some of its bytes
    by_category: dict[str, int] = field(default_factory=dict)  # bytes by writers.CATEGORIES


# ---- per record: what a drained fault batch resolved to (the --events fields) -------------


@dataclass(frozen=True)
class Region:
    """A mapping as the tables group copies: kind, name and section (RegionStat's key)."""

    kind: str  # one of MAPPING_KINDS
    name: str
    section: str | None

    @property
    def path(self) -> str | None:
        """The --events "path": a file or shm object or anon name; None for heap/stack/anon."""
        return self.name if self.kind in ("file", "shm", "anon_named") and self.name else None


UNMAPPED = Region("other", "[unknown]", None)  # an address in no known mapping (or none)


@dataclass(frozen=True)
class Stack:
    """A native stack, resolved (attribution/writers.py)."""

    frames: tuple[str, ...]  # "function (module)", innermost first
    truncated: bool  # the walk ended early: only these leading frames are real


NO_STACK = Stack((), False)


@dataclass(frozen=True)
class Block:
    """The allocator block a copied page is attributed to (the one covering most of it)."""

    addr: int
    size: int  # bytes
    origin: str  # "malloc" or "recovered", as AllocationStat.origin


@dataclass(frozen=True)
class ResolvedStack:
    """A Python writer stack, named (python/tracker.py)."""

    frames: tuple[str, ...]  # "function (file:line)", innermost first
    native_leaf: str
    category: str  # one of python/writers.CATEGORIES


@dataclass(frozen=True)
class FaultAttribution:
    """What the engine found for each record of one drained fault batch, in the batch's order.

    Columns of indices into tables of typed rows rather than a row per record: a drain holds
    tens of thousands of records but few distinct blocks and stacks, and output/events.py
    writes each distinct row's text once.  -1: none."""

    region: np.ndarray  # index into `regions` (UNMAPPED's for a record without address)
    offset: np.ndarray  # offset into the mapped file, -1 for none
    block: np.ndarray  # index into `blocks`
    stack: np.ndarray  # index into `stacks` (the writer's native stack)
    modules: np.ndarray  # index into `new_modules`
    regions: Sequence[Region]  # every region the engine knows: only ever appended to
    blocks: tuple[Block, ...]
    stacks: tuple[Stack, ...]
    # Objects of `module+0xOFFSET` frames first named while resolving a stack of this batch,
    # {basename: {"path", "build_id", "loads"}} (as AttributionView.modules): the records of
    # that stack carry them, so an event log names each object once.
    new_modules: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class FaultPythonStacks:
    """The Python writer stack of each record of one drained fault batch (python/tracker.py)."""

    stack: np.ndarray  # index into `stacks`, -1: none (not a copy, not Python, not readable)
    stacks: tuple[ResolvedStack, ...]
