"""What a report shows, whichever file it came from: plain tables, no I/O, no formatting.

A summary (`--json`) and an event log (`--events`) both load into one :class:`ReportData`, so
the text and HTML renderers never care which file they were given.  Its rows are the tracer's
own result types (cowtrace/results.py: mappings, allocation sites, writer stacks, Python
writers and types), so the live view, the end-of-run summary and the report render a section
with one renderer; only the totals, the processes and the exact stack pairs of an event log
are the report's own. A section the file did not
carry (attribution not run, an older tracer) is ``None``, told apart from an empty list
(attribution ran and found nothing): renderers say "not in this file" for the one and "none"
for the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cowtrace.model import ExitStatus
from cowtrace.results import (
    AllocationStat,
    ProcessExit,
    PythonTypeStat,
    PythonWriterStat,
    RegionStat,
    WriterStat,
)


@dataclass
class Totals:
    """Family totals. From an event log they count the lines, so lost events are missing."""

    copies: int = 0
    copied_bytes: int = 0
    reuses: int = 0
    zero_fills: int = 0
    file_copies: int = 0
    gup_copies: int = 0
    lost_events: int | None = None  # unknown for an event log


@dataclass
class ProcessRow:
    """One member. Fields an event log cannot know (comm, role, exit) are None there."""

    pid: int
    copies: int = 0
    copied_bytes: int = 0
    reuses: int = 0
    zero_fills: int = 0
    ppid: int | None = None
    comm: str | None = None
    role: str | None = None
    exited: bool | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    exit: ProcessExit | None = None  # None: the file has no exit-time accounting
    ns_pid: int | None = None  # its pid inside its container (summary "ns_pid"), if any

    @property
    def pid_label(self) -> str:
        """``4242``, or ``4242 (ns 7)`` for a member of a container."""
        return str(self.pid) if self.ns_pid is None else f"{self.pid} (ns {self.ns_pid})"

    def status(self) -> str:
        """``running``, ``exit 0``, ``signal 9``, or ``?`` when the file does not say."""
        if self.exited is None:
            return "?"
        if not self.exited:
            return "running"
        return ExitStatus(self.exit_code, self.exit_signal).describe(brief=True)


@dataclass
class StackSample:
    """Copied bytes under one exact (native stack, Python stack) pair: only an event log has
    these, since it records both stacks of each copy on one line."""

    native: tuple[str, ...] | None  # innermost first; None: no native stack captured
    python: tuple[str, ...] | None  # innermost first; None: not a Python writer
    truncated: bool
    copied_bytes: int


@dataclass
class ReportData:
    """Everything one report shows. ``source`` is ``"summary"`` or ``"events"``."""

    source: str
    path: str
    totals: Totals
    processes: list[ProcessRow]
    root_pid: int | None = None
    duration_s: float | None = None
    end_reason: str | None = None
    regions: list[RegionStat] | None = None
    allocations: list[AllocationStat] | None = None
    writers: list[WriterStat] | None = None
    python_writers: list[PythonWriterStat] | None = None
    why: list[str] | None = None
    python_types: list[PythonTypeStat] | None = None
    # The copied pages of CPython members by class (summary "python_pages"): how many were
    # resolved, and how many were not examined over the time budget (results.OVER_BUDGET),
    # which python_types leaves out. None: the file does not say (an event log).
    python_pages: dict[str, int] | None = None
    samples: list[StackSample] | None = None  # event logs only: the exact stack pairs
    events: int | None = None  # lines read, for an event log
    modules: dict[str, Any] | None = None  # "modules": build-ids of module+0xOFFSET frames
