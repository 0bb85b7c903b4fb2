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
from cowtrace.attribution.maps import MapWatcher
from cowtrace.attribution.sink import AttributionSink, NullSink, StackResolver, feed_lifecycle
from cowtrace.attribution.view import AttributionView
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
from cowtrace.python.tracker import PythonStacks
from cowtrace.python.writers import remedies

ADOPTION_ROUNDS = 5  # /proc rescans to catch forks racing with the attach
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
    """Traces one family from attach to finish."""

    def __init__(self, root_pid: int, options: SessionOptions | None = None) -> None:
        self.options = options or SessionOptions()
        self.root_pid = root_pid
        self.family = Family(root_pid)
        self.tracer = KernelTracer(
            TracerConfig(
                ring_bytes=self.options.ring_bytes,
                stacks=self.options.stacks,
                alloc_ring_bytes=self.options.ring_bytes if self.options.malloc else 0,
                python_stacks=self.options.python_stacks,
            )
        )
        self.events = EventLog(self.options.events_path) if self.options.events_path else None
        self.started = time.monotonic()
        self._last_update = self.started
        self._root_exit_seen: float | None = None
        self._hold_until = 0.0
        self.lost_events = 0
        self.events_drained = 0  # detail records drained from the ring (tracer health)
        self.family_rate = 0.0
        self.attach_s = 0.0
        self.sink: AttributionSink = NullSink()
        self.resolver: KernelStackResolver | None = None
        self.allocators: AllocatorProbes | None = None
        self.tracer_stats: dict[str, int] = {}
        self._usage_at_start = OwnUsage()
        self._bpf_stats_at_start = False
        self.cost: TracerCost | None = None  # read in finish(), before the program is unloaded
        self._recover_heap = False  # attach mode: adopted members' heaps predate tracing
        self.python = PythonStacks() if self.options.python_stacks else None
        self.maps_watch = MapWatcher(lambda pid: self.tracer.clear_map_changed(pid))

    # ---- set-up ----------------------------------------------------------------------------
    def set_root(self, root_pid: int) -> None:
        """For `run`: the root is known only once the command is forked, after open()."""
        self.root_pid = root_pid
        self.family = Family(root_pid)

    def open(self) -> None:
        """Load the BPF program.  Separate from attach so that `run` can start the command
        after the program is ready and before it forks."""
        self.tracer.open()
        self.resolver = KernelStackResolver(
            self.tracer.bpf, root=lambda: self.root_pid, entries=self.tracer.stack_entries
        )
        self.sink = self.options.sink_factory(self.resolver, self.options)
        if self.options.malloc:
            self.allocators = AllocatorProbes(self.tracer.bpf)
        # Maps are re-read after a change only for those who use them.
        uses_maps = not isinstance(self.sink, NullSink) or self.allocators is not None
        self.maps_watch.read_proc = uses_maps
        if self.python is not None:
            self.python.bind(self.tracer.bpf)
        self.started = time.monotonic()
        self._usage_at_start = own_usage()  # the cost is counted over the same span as duration
        self._bpf_stats_at_start = bpf_stats_enabled()
        self._last_update = self.started
        self._hold_until = self.started + self.options.hold_events_s

    def attach_root(
        self, stat: procfs.ProcStat, *, adopted: bool, await_exec: bool = False
    ) -> None:
        """Make the root a member, then adopt its existing descendants.

        The root goes into the kernel's table first, so its forks from now on are caught there;
        forks by descendants not yet adopted are caught by rescanning /proc until it is stable.
        """
        self.tracer.add_member(stat.pid, stat.pid, await_exec=await_exec)
        self.family.adopt(stat, adopted=adopted)
        self._recover_heap = adopted
        # A held `run` child is still cowtrace: its program image comes with its exec record.
        self._adopt_attribution(stat.pid, None, image=not await_exec)
        self._python_adopt(stat.pid, await_exec)
        for _ in range(ADOPTION_ROUNDS):
            found = [s for s in procfs.descendants(stat.pid) if s.pid not in self.family.members]
            if not found:
                break
            for child in found:
                self.tracer.add_member(child.pid, stat.pid)
                self.family.adopt(child, adopted=True)
                self._adopt_attribution(child.pid, child.ppid)
                self._python_adopt(child.pid, False)
        own = procfs.read_stat(os.getpid())
        if own is not None:
            self.attach_s = max(0.0, time.monotonic() - own.start_monotonic())

    def cover_program(self, executable: str) -> None:
        """`run`: probe the allocators the command will use, before it is released."""
        if self.allocators is not None:
            self.allocators.cover_program(self.root_pid, executable)

    def _adopt_attribution(self, pid: int, parent: int | None, *, image: bool = True) -> None:
        """A member that existed before tracing (or whose fork record was lost)."""
        self.sink.adopt(pid, parent, recover_heap=self._recover_heap)
        if not image:
            return
        if self.resolver is not None:
            if parent is not None and parent in self.family.members:
                self.resolver.note_fork(parent, pid)
            else:
                self.resolver.note_image(pid)
        if self.allocators is not None and parent is None:  # the root only (uprobes.py)
            self.allocators.cover_process(pid)

    # ---- the loop --------------------------------------------------------------------------
    def step(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for lifecycle records, then fold in everything pending.

        Per cycle (attribution/sink.py): the fault ring is drained first, then the lifecycle
        records that came meanwhile, the map changes and the allocator calls; the sink is fed
        lifecycle, maps, allocations, faults."""
        records = self.tracer.poll_proc_records(int(timeout_s * 1000))
        if self.python is not None:
            self.python.retry_pending()
        if time.monotonic() >= self._hold_until:
            self._drain(records)
        else:
            self._apply_lifecycle(records)

    def _apply_lifecycle(self, records: list[ProcRecord]) -> None:
        self.maps_watch.on_records(records)
        for record in records:
            self.family.apply(record)
            # The stack resolver first: at an exec it makes the new image's symbol cache, which
            # only a live process can give, and a short program may be done within
            # milliseconds.  The Python detection below can wait for the loader, and the
            # allocator probes read ELF files: both come after.
            feed_lifecycle(record, self.sink, self.resolver)
            self._python_lifecycle(record)
            if record.pid == self.root_pid and record.type in (3, 4):
                self._root_exit_seen = self._root_exit_seen or time.monotonic()
            if self.allocators is not None:
                if record.type == PE_EXEC:  # a new program: probed as a root would be
                    self.allocators.cover_process(record.pid)
                elif record.type in (PE_EXIT, PE_FREE):
                    self.allocators.release(record.pid)

    def _drain(self, lifecycle: list[ProcRecord] | None = None) -> None:
        faults = self.tracer.drain_events()
        self._apply_lifecycle([*(lifecycle or []), *self.tracer.poll_proc_records(0)])
        snapshots, mapped_code = self.maps_watch.read()  # after the faults: see sink.py
        allocs = self.tracer.drain_alloc_events()
        if mapped_code:
            if self.resolver is not None:
                self.resolver.note_code_mapped(mapped_code)
            if self.allocators is not None:  # an allocator a process dlopen()ed just now
                self.allocators.note_code_mapped(mapped_code)
        if snapshots:
            self.sink.on_map_snapshots(snapshots)
        if len(allocs) and self.allocators is not None and self.allocators.given_up:
            # calls made while a given-up process' probes were being closed: its table is
            # unknown from the moment it was given up
            allocs = allocs[~np.isin(allocs["pid"], list(self.allocators.given_up))]
        if len(allocs):
            self.sink.on_alloc_events(allocs)
            if self.allocators is not None:
                for pid in self.allocators.charge(allocs):
                    self.sink.allocations_untracked(time.monotonic_ns(), pid)
        self._feed_faults(faults)

    def _feed_faults(self, faults: np.ndarray) -> None:
        if not len(faults):
            return
        self.events_drained += len(faults)
        extra: Any = self.sink.on_fault_events(faults)
        pystacks = self._python_records(faults)
        if self.events is not None:
            self.events.write(faults, extra, pystacks=pystacks)

    def root_done(self) -> bool:
        """The root exited and its counts are final (or waiting longer would not help)."""
        if self._root_exit_seen is None:
            return False
        if self.root_pid in self.family.final:
            return True
        return time.monotonic() - self._root_exit_seen > FINAL_READ_GRACE_S

    def root_exited(self) -> bool:
        return self._root_exit_seen is not None

    def refresh(self) -> Snapshot:
        """Read the kernel's counters and take a snapshot."""
        now = time.monotonic()
        states = self.tracer.members()
        for pid, _state in states.items():
            if pid not in self.family.members:  # its fork record was lost: name it from /proc
                stat = procfs.read_stat(pid)
                if stat is not None:
                    self.family.adopt(stat, adopted=False)
                    self._adopt_attribution(pid, stat.ppid)
        interval = now - self._last_update
        before = self.family.totals().copied_bytes
        self.family.update_counts(states, interval)
        if interval > 0:
            self.family_rate = max(0.0, (self.family.totals().copied_bytes - before) / interval)
        self._last_update = now
        done = [pid for pid in self.family.final if pid in states and pid != self.root_pid]
        self.tracer.forget(done)
        if self.allocators is not None:  # in case their exit record was lost
            for pid in done:
                self.allocators.release(pid)
        self.tracer_stats = self.tracer.stats()
        if self.allocators is not None:  # over their budget: tables unknown from then on
            self.tracer_stats["alloc_probes_removed"] = len(self.allocators.given_up)
        self.lost_events = self.tracer_stats["lost_events"]
        return self._snapshot(now)

    def _snapshot(self, now: float, *, ended: bool = False, reason: str = "") -> Snapshot:
        return Snapshot(
            root_pid=self.root_pid,
            started=self.started,
            now=now,
            members=self.family.ordered(),
            totals=self.family.totals(),
            lost_events=self.lost_events,
            copy_rate=self.family_rate,
            ended=ended,
            end_reason=reason,
            attach_s=self.attach_s,
            events_drained=self.events_drained,
            attribution=self._python_types_view(self._python_view(self.sink.view())),
            cost=self.cost if ended else None,
        )

    # ---- the end ---------------------------------------------------------------------------
    def finish(self, reason: str) -> Snapshot:
        """Detach, account for everything still in flight, and take the final snapshot."""
        if self.allocators is not None:  # closes still running (uprobes.py): theirs first
            self.allocators.wait()
        self.tracer.detach()
        self._drain(self.tracer.poll_proc_records(0))
        extra = self._close_open_episodes()
        snapshot = self.refresh()
        for pid, counts in extra.items():
            self.family.add_counts(pid, counts)
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
        self._feed_faults(records[records["kind"] != 0])
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

    def _python_records(self, records: np.ndarray) -> list[str] | None:
        """Copies with a Python stack go to the writers; the --events "pystack" values."""
        if self.python is None or self.tracer.bpf is None:
            return None
        last_blocks = getattr(self.sink, "last_blocks", None)  # the engine's block per record
        return self.python.on_fault_events(records, last_blocks() if last_blocks else None)

    def _python_types_view(self, view: AttributionView | None) -> AttributionView | None:
        """`view` with the copied bytes by Python type (python/copied_types.py)."""
        if self.python is None or not self.python.types.active:
            return view
        return dataclasses.replace(view or AttributionView(), **self.python.types.view_fields())

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
        )

    def close(self) -> None:
        """Unload the BPF program and close the log; safe to call more than once."""
        if self.resolver is not None and self.tracer.bpf is not None:
            self.resolver.freeze()
        if self.allocators is not None:
            self.allocators.wait()
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
    deadline = None if duration is None else session.started + duration
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
