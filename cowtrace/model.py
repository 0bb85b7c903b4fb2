"""The data model shared by the tracer core, the renderers and the exporters.

The kernel keeps the authoritative counters; these classes are the user-space picture of them
at one moment. Renderers and exporters only ever read a :class:`Snapshot`, so they never depend
on how the numbers were collected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.results import AttributionView

if TYPE_CHECKING:
    from cowtrace.metrics.cost import TracerCost


class Role(StrEnum):
    """Where a member sits in the family tree, seen from the traced root."""

    ROOT = "root"
    CHILD = "child"  # a direct child of the root: a pre-fork server's worker
    DESCENDANT = "descendant"  # anything forked further down


class EventKind(StrEnum):
    """The three outcomes of a write fault on a write-protected page."""

    COPY = "copy"
    REUSE = "reuse"
    ZERO_FILL = "zero_fill"


@dataclass
class Counts:
    """Copy-on-write outcomes of one process (or a sum of processes).

    ``copies`` includes ``file_copies`` (copies whose source was a page-cache page of a
    MAP_PRIVATE file) and ``gup_copies`` (copies made by get_user_pages writes, which carry
    no address).  ``wp_retries`` are not outcomes: copy passes the kernel gave up to take the
    fault again under the mmap lock (bpf/map_tracking.h).  Nothing was copied, but delay
    accounting counts each in ``wpcopy_count``: copies + zero_fills + wp_retries is that count.
    """

    copies: int = 0
    file_copies: int = 0
    gup_copies: int = 0
    reuses: int = 0
    zero_fills: int = 0
    wp_retries: int = 0

    @property
    def copied_bytes(self) -> int:
        return self.copies * PAGE_SIZE

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.copies + other.copies,
            self.file_copies + other.file_copies,
            self.gup_copies + other.gup_copies,
            self.reuses + other.reuses,
            self.zero_fills + other.zero_fills,
            self.wp_retries + other.wp_retries,
        )


@dataclass
class ExitStatus:
    """How a member ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    def describe(self, *, brief: bool = False) -> str:
        """``killed by signal 9`` (``signal 9`` when ``brief``: the report's column), ``exit
        0``, or ``exited`` when neither is known."""
        if self.signal is not None:
            return f"signal {self.signal}" if brief else f"killed by signal {self.signal}"
        if self.code is not None:
            return f"exit {self.code}"
        return "exited"


@dataclass
class Member:
    """One process of the traced family.

    Times are seconds on the monotonic clock (``time.monotonic()``), the same clock as the
    kernel's ``bpf_ktime_get_ns``.
    """

    pid: int
    ppid: int
    comm: str
    role: Role
    start_time: float
    adopted: bool = False  # already running when tracing began (found in /proc)
    exit_time: float | None = None
    exit_status: ExitStatus | None = None
    execs: int = 0  # how many times it called exec while traced
    counts: Counts = field(default_factory=Counts)
    copy_rate: float = 0.0  # copied bytes per second over the last interval
    # Its pid in its own pid namespace (a container's), shown beside `pid` (the host's);
    # None when that namespace is cowtrace's, or it could not be read (gone too soon).
    ns_pid: int | None = None

    @property
    def exited(self) -> bool:
        return self.exit_time is not None

    def age(self, now: float) -> float:
        end = self.exit_time if self.exit_time is not None else now
        return max(0.0, end - self.start_time)


@dataclass
class Snapshot:
    """Everything a renderer needs for one refresh."""

    root_pid: int
    started: float  # monotonic time tracing began
    now: float  # monotonic time of this snapshot
    members: list[Member]
    totals: Counts
    lost_events: int = 0
    copy_rate: float = 0.0  # family copied bytes per second over the last interval
    ended: bool = False  # the final snapshot, taken when tracing stopped
    end_reason: str = ""  # "interrupted", "terminated", "root exited", "duration reached"
    attach_s: float = 0.0  # from cowtrace's start to the family being traced (compile included)
    attribution: AttributionView | None = None  # mappings, allocations, writers (when enabled)
    events_drained: int = 0  # detail records drained from the kernel so far (tracer health)
    cost: TracerCost | None = None  # what tracing cost: in the final snapshot of a session

    @property
    def duration(self) -> float:
        return max(0.0, self.now - self.started)

    @property
    def alive(self) -> list[Member]:
        return [m for m in self.members if not m.exited]

    @property
    def exited(self) -> list[Member]:
        return [m for m in self.members if m.exited]
