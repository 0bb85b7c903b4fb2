"""The seam between the tracer (kernel records, session) and the attribution engine.

The session hands every record it drains to an AttributionSink, in one order per drain cycle:
lifecycle (fork, exec, exit), then map snapshots, then allocator calls, then the classified
faults.  The fault ring is drained FIRST, so that every map change or allocation that happened
before the last fault of the batch has been drained too (a map changed before it is re-read
after it); the sink orders what it is given by
`ts` (CLOCK_MONOTONIC ns, the kernel's clock for every record).

The engine (engine.py) is the real sink; NullSink keeps the core tracer's behaviour when
attribution is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from cowtrace.attribution.maps import MapSnapshot
from cowtrace.kernel.abi import PE_EXEC, PE_EXIT, PE_FORK
from cowtrace.results import AttributionView, FaultAttribution


class StackResolver(Protocol):
    """Turns the kernel's stack ids into addresses and names (kernel/stacks.py)."""

    def addresses(self, stack_id: int) -> Sequence[int]:
        """Return addresses of a user stack, innermost first; empty if the id is unknown."""
        ...

    def symbolize(self, pid: int, addr: int) -> str:
        """`function (module)` for an address in `pid`'s memory (falls back to the family)."""
        ...


class AttributionSink(Protocol):
    def adopt(self, pid: int, parent: int | None, *, recover_heap: bool) -> None:
        """A member that existed before tracing: read its map now (and walk its heap)."""
        ...

    def on_fork(self, ts_ns: int, parent: int, child: int) -> None: ...

    def on_exec(self, ts_ns: int, pid: int) -> None: ...

    def on_exit(self, ts_ns: int, pid: int) -> None: ...

    def on_map_snapshots(self, snapshots: list[MapSnapshot]) -> None:
        """Maps re-read after a change (attribution/maps.py MapWatcher)."""
        ...

    def on_alloc_events(self, records: np.ndarray) -> None:
        """ALLOC_EVENT_DTYPE records."""
        ...

    def allocations_untracked(self, ts_ns: int, pid: int) -> None:
        """`pid`'s allocator probes came off at `ts_ns` (over their cost budget,
        kernel/uprobes.py): its allocation table is unknown from then on."""
        ...

    def on_fault_events(self, records: np.ndarray) -> FaultAttribution | None:
        """EVENT_DTYPE records; returns what each record resolved to, for the attribution
        fields of --events (None when there is nothing to add)."""
        ...

    def view(self, *, final: bool = False) -> AttributionView | None:
        """The typed results (cowtrace/results.py): the tables now (None when empty), or with
        `final` everything the summary writes (output/summary.py serializes it)."""
        ...


class LifecycleRecord(Protocol):
    """What feed_lifecycle reads of a kernel lifecycle record (kernel/tracer.py ProcRecord)."""

    type: int
    ts_ns: int
    pid: int
    ppid: int


class ImageTracker(Protocol):
    """The part of the stack resolver that follows program images (kernel/stacks.py)."""

    def note_fork(self, parent: int, child: int) -> None: ...

    def note_image(self, pid: int) -> None: ...


def feed_lifecycle(
    record: LifecycleRecord, sink: AttributionSink, images: ImageTracker | None
) -> None:
    """Hand a fork, exec or exit record to the sink, and tell the stack resolver which program
    image a process runs (a child shares its parent's until it execs).  One place for the
    session and the agent's fleet."""
    if record.type == PE_FORK:
        if images is not None:
            images.note_fork(record.ppid, record.pid)
        sink.on_fork(record.ts_ns, record.ppid, record.pid)
    elif record.type == PE_EXEC:
        if images is not None:
            images.note_image(record.pid)
        sink.on_exec(record.ts_ns, record.pid)
    elif record.type == PE_EXIT:
        sink.on_exit(record.ts_ns, record.pid)


class NullSink:
    """Attribution off: accepts everything, adds nothing."""

    def adopt(self, pid: int, parent: int | None, *, recover_heap: bool) -> None:
        return None

    def on_fork(self, ts_ns: int, parent: int, child: int) -> None:
        return None

    def on_exec(self, ts_ns: int, pid: int) -> None:
        return None

    def on_exit(self, ts_ns: int, pid: int) -> None:
        return None

    def on_map_snapshots(self, snapshots: list[MapSnapshot]) -> None:
        return None

    def on_alloc_events(self, records: np.ndarray) -> None:
        return None

    def allocations_untracked(self, ts_ns: int, pid: int) -> None:
        return None

    def on_fault_events(self, records: np.ndarray) -> FaultAttribution | None:
        return None

    def view(self, *, final: bool = False) -> AttributionView | None:
        return None
