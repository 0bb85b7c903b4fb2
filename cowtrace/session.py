"""A tracing session: the kernel tracer, one family, the detail log and the clock.

Commands (trace, run, demo) build a Session, call `step()` in their loop and `finish()` once;
renderers get Snapshots.  Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cowtrace.attribution.engine import AttributionEngine
from cowtrace.attribution.sink import AttributionSink, NullSink, StackResolver
from cowtrace.core import TracingCore, Tracked
from cowtrace.errors import CowtraceError
from cowtrace.family import Family
from cowtrace.host import procfs
from cowtrace.kernel.abi import (
    EP_COPIED,
    EP_WP_FAULT,
    KIND_COPY,
    KIND_REUSE,
    PE_EXEC,
    PE_EXIT,
    PE_FORK,
    PE_FREE,
)
from cowtrace.kernel.ringbuf import EVENT_DTYPE
from cowtrace.kernel.stacks import KernelStackResolver
from cowtrace.kernel.tracer import KernelTracer, ProcRecord, TracerConfig
from cowtrace.kernel.uprobes import AllocatorProbes
from cowtrace.metrics.cost import OwnUsage, TracerCost, own_usage
from cowtrace.metrics.samplers import bpf_stats_enabled, program_run_ns
from cowtrace.model import Counts, Snapshot
from cowtrace.output.events import EventLog
from cowtrace.python.budget import DEFAULT_SHARE, TypesBudget
from cowtrace.python.tracker import STACK_AGE_S, PythonStacks
from cowtrace.python.writers import remedies
from cowtrace.results import AttributionView, FaultPythonStacks

FINAL_READ_GRACE_S = 2.0  # how long to wait for the root's task to be freed after it exits


# Builds the attribution engine once the program is loaded (it needs the stack resolver).
SinkFactory = Callable[[StackResolver, "SessionOptions"], AttributionSink]


def null_sink(_resolver: StackResolver, _options: SessionOptions) -> AttributionSink:
    """Attribution off: the core tracer's behaviour."""
    return NullSink()


def attribution_engine(resolver: StackResolver, options: SessionOptions) -> AttributionSink:
    """The attribution engine: mappings, allocations, writer stacks, exit-time copies."""
    return AttributionEngine(
        resolver if options.stacks else None,
        exit_window_s=options.exit_window_s,
        event_fields=options.events_path is not None,
    )


@dataclass
class SessionOptions:
    events_path: str | None = None
    ring_bytes: int = 16 << 20
    hold_events_s: float = 0.0  # testing aid: leave the ring undrained this long at start
    malloc: bool = False  # allocator uprobes (`run`: on unless --no-malloc; attach: --malloc)
    stacks: bool = True  # native writer and allocation stacks (--no-stacks: off)
    exit_window_s: float = 0.5  # for the engine: copies this close to a member's exit
    sink_factory: SinkFactory = attribution_engine  # null_sink: attribution off
    python_stacks: bool = True  # Python writer stacks of CPython members (cowtrace/python/)
    # Share of wall time the Python-types resolution may take (python/budget.py; None: no limit)
    python_types_budget: float | None = DEFAULT_SHARE
    python_stack_age_s: float = STACK_AGE_S  # known Python stacks named again (age_stacks)


def validate_target(pid: int) -> procfs.ProcStat:
    """The root must be a live user-space process that is not cowtrace itself."""
    if pid <= 0:
        raise CowtraceError(f"invalid pid {pid}")
    stat = procfs.read_stat(pid)
    if stat is None:
        raise CowtraceError(f"no process with pid {pid}")
    if stat.is_kernel_thread:
        raise CowtraceError(f"pid {pid} ({stat.comm}) is a kernel thread: it has no user memory")
    if stat.state in ("Z", "X"):
        raise CowtraceError(f"pid {pid} ({stat.comm}) has already exited")
    if pid == os.getpid():
        raise CowtraceError("cowtrace cannot trace itself")
    return stat


class Session:
    """Traces one family from attach to finish: a TracingCore (cowtrace/core.py) with one
    family, the --events log, Python writer stacks, the root's end and the tracer's cost."""

    def __init__(
        self,
        root_pid: int,
        options: SessionOptions | None = None,
        *,
        tracer: KernelTracer | None = None,
    ) -> None:
        self.options = options or SessionOptions()
        self.root_pid = root_pid
        self.tracer = tracer or KernelTracer(
            TracerConfig(
                ring_bytes=self.options.ring_bytes,
                stacks=self.options.stacks,
                alloc_ring_bytes=self.options.ring_bytes if self.options.malloc else 0,
                python_stacks=self.options.python_stacks,
            )
        )
        self.core = TracingCore(self.tracer, route=lambda _record: self.tracked.family)
        self.core.on_record = self._on_record
        self.core.on_faults = self._on_faults
        self.core.on_adopted = self._python_adopt
        now = time.monotonic()
        self.tracked = Tracked(Family(root_pid), now, now)
        self.events = EventLog(self.options.events_path) if self.options.events_path else None
        self._root_exit_seen: float | None = None
        self._hold_until = 0.0
        self.attach_s = 0.0
        self.resolver: KernelStackResolver | None = None
        self.allocators: AllocatorProbes | None = None
        self._usage_at_start = OwnUsage()
        self._bpf_stats_at_start = False
        self.cost: TracerCost | None = None  # read in finish(), before the program is unloaded
        self.python = (
            PythonStacks(
                TypesBudget(self.options.python_types_budget), self.options.python_stack_age_s
            )
            if self.options.python_stacks
            else None
        )

    # ---- set-up ----------------------------------------------------------------------------
    def set_root(self, root_pid: int) -> None:
        """For `run`: the root is known only once the command is forked, after open()."""
        self.root_pid = root_pid
        self.tracked.family = Family(root_pid)

    def open(self) -> None:
        """Load the BPF program.  Separate from attach so that `run` can start the command
        after the program is ready and before it forks."""
        self.tracer.open()
        self.resolver = KernelStackResolver(
            self.tracer.bpf, root=lambda: self.root_pid, entries=self.tracer.stack_entries
        )
        self.core.resolver = self.resolver
        self.core.sink = self.options.sink_factory(self.resolver, self.options)
        if self.options.malloc:
            self.allocators = AllocatorProbes(self.tracer.bpf)
            self.core.allocators = self.allocators
        # Maps are re-read after a change only for those who use them.
        uses_maps = not isinstance(self.core.sink, NullSink) or self.allocators is not None
        self.core.maps_watch.read_proc = uses_maps
        if self.python is not None:
            self.python.bind(self.tracer.bpf)
        started = time.monotonic()
        self.tracked.started = self.tracked.last_update = started
        self._usage_at_start = own_usage()  # the cost is counted over the same span as duration
        self._bpf_stats_at_start = bpf_stats_enabled()
        self._hold_until = started + self.options.hold_events_s

    def attach_root(
        self, stat: procfs.ProcStat, *, adopted: bool, await_exec: bool = False
    ) -> None:
        """Make the root a member, then adopt its existing descendants (core.adopt_family)."""
        self.core.recover_heap = adopted
        self.core.adopt_family(stat, self.tracked.family, adopted=adopted, await_exec=await_exec)
        own = procfs.read_stat(os.getpid())
        if own is not None:
            self.attach_s = max(0.0, time.monotonic() - own.start_monotonic())

    def cover_program(self, executable: str) -> None:
        """`run`: probe the allocators the command will use, before it is released."""
        if self.allocators is not None:
            self.allocators.cover_program(self.root_pid, executable)

    # ---- the loop --------------------------------------------------------------------------
    def step(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for lifecycle records, then fold in everything pending
        (the core's drain order); while the ring is held, only the lifecycle records."""
        records = self.tracer.poll_proc_records(int(timeout_s * 1000))
        if self.python is not None:
            self.python.retry_pending()
        if time.monotonic() >= self._hold_until:
            self.core.drain(records)
        else:
            self.core.apply_lifecycle(records)
        if self.python is not None:
            self.python.age_stacks()  # after the drain: its records' stacks are named

    def _on_record(self, record: ProcRecord) -> None:
        """After the family, the sink and the stack resolver took the record."""
        self._python_lifecycle(record)
        if record.pid == self.root_pid and record.type in (PE_EXIT, PE_FREE):
            self._root_exit_seen = self._root_exit_seen or time.monotonic()

    def _on_faults(self, faults: np.ndarray, extra: Any) -> None:
        """After the sink: Python writers, then the --events lines."""
        pystacks = self._python_records(faults)
        if self.events is not None:
            self.events.write(faults, extra, pystacks=pystacks)

    def root_done(self) -> bool:
        """The root exited and its counts are final (or waiting longer would not help)."""
        if self._root_exit_seen is None:
            return False
        if self.root_pid in self.tracked.family.final:
            return True
        return time.monotonic() - self._root_exit_seen > FINAL_READ_GRACE_S

    def root_exited(self) -> bool:
        return self._root_exit_seen is not None

    def refresh(self) -> Snapshot:
        """Read the kernel's counters and take a snapshot."""
        now = time.monotonic()
        states = self.tracer.members()
        self.core.update(self.tracked, states, now)
        done = [pid for pid in self.tracked.family.final if pid in states and pid != self.root_pid]
        self.core.forget(done)
        self.core.read_health()
        return self._snapshot(now)

    def _snapshot(self, now: float, *, ended: bool = False, reason: str = "") -> Snapshot:
        view = self.core.sink.view(final=ended)
        return self.core.snapshot(
            self.tracked,
            now,
            ended=ended,
            end_reason=reason,
            attach_s=self.attach_s,
            attribution=self._python_types_view(self._python_view(view)),
            cost=self.cost if ended else None,
        )

    # ---- the end ---------------------------------------------------------------------------
    def finish(self, reason: str) -> Snapshot:
        """Detach, account for everything still in flight, and take the final snapshot."""
        if self.allocators is not None:  # closes still running (uprobes.py): theirs first
            self.allocators.wait()
        self.tracer.detach()
        self.core.drain(self.tracer.poll_proc_records(0))
        extra = self._close_open_episodes()
        snapshot = self.refresh()
        for pid, counts in extra.items():
            self.tracked.family.add_counts(pid, counts)
        self.cost = self._read_cost()
        if self.resolver is not None:
            self.resolver.freeze()  # the summary may resolve stacks after the unload
        final = self._snapshot(snapshot.now, ended=True, reason=reason)
        self.close()
        return final

    def _read_cost(self) -> TracerCost:
        """cowtrace's own CPU and memory, and its programs' run time (while still loaded)."""
        return TracerCost(
            start=self._usage_at_start,
            end=own_usage(),
            bpf=program_run_ns(self.tracer.program_fds()) if bpf_stats_enabled() else None,
            bpf_stats_at_start=self._bpf_stats_at_start,
        )

    def _close_open_episodes(self) -> dict[int, Counts]:
        """An episode still open at the end is a reuse (a fault that got no copy) or a copy or
        zero-fill whose record was waiting for the thread's next fault: account for them, as
        the kernel would have at that fault.  Returns the reuses to add, by member (copies
        and zero-fills are counted already)."""
        extra: dict[int, Counts] = {}
        open_episodes = self.tracer.open_episodes()
        if not open_episodes:
            return extra
        records = np.zeros(len(open_episodes), dtype=EVENT_DTYPE)
        for index, (tid, episode) in enumerate(open_episodes):
            kind = KIND_REUSE if episode.state == EP_WP_FAULT else episode.kind
            if episode.state == EP_WP_FAULT:
                extra[episode.tgid] = extra.get(episode.tgid, Counts()) + Counts(reuses=1)
            elif episode.state != EP_COPIED:
                continue
            records[index] = (
                0,
                0,
                episode.ts,
                episode.addr,
                episode.pid,
                tid,
                episode.stack_id if kind == KIND_COPY else -1,
                episode.pystack_id if kind == KIND_COPY else -1,
                kind,
                episode.source,
                episode.via,
                b"",
            )
        self.core.feed_faults(records[records["kind"] != 0])
        return extra

    # ---- Python writer stacks (cowtrace/python/) -------------------------------------------
    def _python_adopt(self, pid: int, await_exec: bool) -> None:
        if self.python is not None and not await_exec:
            self.python.adopt(pid)

    def _python_lifecycle(self, record: ProcRecord) -> None:
        if self.python is None:
            return
        if record.type == PE_FORK:
            self.python.on_fork(record.ppid, record.pid)
        elif record.type == PE_EXEC:
            self.python.on_exec(record.pid)
        elif record.type == PE_FREE:
            self.python.on_exit(record.pid)

    def _python_records(self, records: np.ndarray) -> FaultPythonStacks | None:
        """Copies with a Python stack go to the writers; the --events "pystack" values."""
        if self.python is None or self.tracer.bpf is None:
            return None
        last_blocks = getattr(self.core.sink, "last_blocks", None)  # the engine's block per record
        return self.python.on_fault_events(records, last_blocks() if last_blocks else None)

    def _python_types_view(self, view: AttributionView | None) -> AttributionView | None:
        """`view` with the copied bytes by Python type (python/copied_types.py)."""
        if self.python is None or not self.python.types.active:
            return view
        return dataclasses.replace(
            view or AttributionView(), python=True, **self.python.types.view_fields()
        )

    def _python_view(self, view: AttributionView | None) -> AttributionView | None:
        """`view` with the Python writers and "why" lines (a view of its own if none)."""
        if self.python is None:
            return view
        writers = self.python.writers
        if not writers.total and not self.python.notices:
            return view
        view = view or AttributionView()
        return dataclasses.replace(
            view,
            python_writers=writers.stats(),
            python_remedies=remedies(writers),
            why=(*view.why, *writers.why()),
            python=True,
        )

    def close(self) -> None:
        """Unload the BPF program and close the log; safe to call more than once."""
        if self.resolver is not None and self.tracer.bpf is not None:
            self.resolver.freeze()
        if self.allocators is not None:
            self.allocators.wait()
        if self.python is not None:
            self.python.close()
        self.tracer.close()
        if self.events is not None:
            self.events.close()
            self.events = None


def run_loop(
    session: Session,
    *,
    interval: float,
    on_snapshot: Callable[[Snapshot], None],
    should_stop: Callable[[], str | None],
    duration: float | None = None,
) -> str:
    """Step the session until a stop reason appears; returns the reason."""
    next_refresh = time.monotonic() + interval
    deadline = None if duration is None else session.tracked.started + duration
    while True:
        reason = should_stop()
        if reason:
            return reason
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "duration reached"
        if session.root_done():
            return "root exited"
        wait = min(0.1, max(0.0, next_refresh - now))
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - now))
        session.step(wait)
        if time.monotonic() >= next_refresh:
            on_snapshot(session.refresh())
            next_refresh += interval
            if next_refresh < time.monotonic():
                next_refresh = time.monotonic() + interval
