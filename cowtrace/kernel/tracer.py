"""The loaded BPF program and its maps, behind a small Python interface.

This is the only module that knows the map layouts of bpf/cowtrace.bpf.c.  It hands out plain
Python values (Counts, lifecycle records, numpy arrays of detail records) so that the session
and the renderers never touch bcc.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cowtrace.kernel.bpfsource import compile_program
from cowtrace.kernel.calibrate import load_or_calibrate
from cowtrace.kernel.kallsyms import KernelSymbols
from cowtrace.kernel.ringbuf import EVENT_DTYPE, FixedRecordRing
from cowtrace.model import Counts

PE_FORK, PE_EXEC, PE_EXIT, PE_FREE = 1, 2, 3, 4
KIND_COPY, KIND_REUSE, KIND_ZERO_FILL = 1, 2, 3
SOURCE_ANON, SOURCE_FILE = 0, 1
VIA_USER, VIA_KERNEL, VIA_GUP = 0, 1, 2
EP_NONE, EP_WP_FAULT, EP_COPIED = 0, 1, 2
MF_VFORK_CHILD, MF_EXITED, MF_AWAIT_EXEC = 1, 2, 4
STAT_LOST_EVENTS, STAT_LOST_PROC_EVENTS, STAT_MEMBERS_FULL, STAT_THREADS_FULL = 0, 1, 2, 3

# Every hook of cowtrace.bpf.c, so that they can be detached before the final read.
RAW_TRACEPOINTS = ("page_fault_user", "page_fault_kernel", "mm_page_alloc", "rss_stat")
TRACEPOINTS = (
    "task:task_newtask",
    "sched:sched_process_exec",
    "syscalls:sys_enter_exit_group",
    "signal:signal_deliver",
    "sched:sched_process_exit",
    "sched:sched_process_free",
)


@dataclass
class TracerConfig:
    """Table sizes.  The fault ring holds 48 bytes per event: 16 MiB is ~350k events, a few
    seconds of the worst copy storm, so a consumer that falls behind briefly loses nothing."""

    ring_bytes: int = 16 << 20
    max_members: int = 16384
    max_threads: int = 65536
    python_stacks: bool = True  # the CPython frame walk at each copy (cowtrace/python/)


@dataclass(frozen=True)
class ProcRecord:
    """A lifecycle record from the kernel (fork, exec, exit, free) of one member."""

    type: int
    ts_ns: int
    pid: int
    ppid: int
    root: int
    exit_code: int
    exit_signal: int
    comm: str


@dataclass(frozen=True)
class MemberState:
    """The kernel's counters and flags of one member, read at one moment."""

    pid: int
    root: int
    counts: Counts
    exited: bool
    exit_code: int
    exit_signal: int


class _ProcEvent(ctypes.Structure):
    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("root", ctypes.c_uint32),
        ("exit_code", ctypes.c_int32),
        ("exit_signal", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
    ]


def _power_of_two_pages(size: int) -> int:
    pages = max(1, size // mmap.PAGESIZE)
    return 1 << (pages - 1).bit_length()


class KernelTracer:
    """Owns the BPF program: load, membership, counters, detail records, teardown."""

    def __init__(self, config: TracerConfig | None = None) -> None:
        self.config = config or TracerConfig()
        self._bpf = None
        self._ring: FixedRecordRing | None = None
        self._proc_records: list[ProcRecord] = []
        self._attached = False

    # ---- set-up and teardown ---------------------------------------------------------------
    def open(self) -> None:
        """Calibrate (cached), compile, load and attach.  Raises CowtraceError on failure."""
        symbols = KernelSymbols.load()
        calibration = load_or_calibrate(symbols)
        ring_pages = _power_of_two_pages(self.config.ring_bytes)
        cflags = calibration.cflags(symbols) + [
            f"-DMAX_MEMBERS={self.config.max_members}",
            f"-DMAX_THREADS={self.config.max_threads}",
            f"-DFAULT_RING_PAGES={ring_pages}",
            "-DPROC_RING_PAGES=64",
            f"-DPYTHON_STACKS={int(self.config.python_stacks)}",
        ]
        self._bpf = compile_program("cowtrace.bpf.c", cflags)
        self._attached = True
        self._ring = FixedRecordRing(self._bpf["fault_events"].map_fd, ring_pages * mmap.PAGESIZE)
        self._bpf["proc_events"].open_ring_buffer(self._on_proc_event)

    def detach(self) -> None:
        """Stop every hook; the maps stay readable for the final accounting."""
        if self._bpf is None or not self._attached:
            return
        # bcc raises a bare Exception for a hook that is not attached: nothing to do then.
        for name in RAW_TRACEPOINTS:
            with contextlib.suppress(Exception):
                self._bpf.detach_raw_tracepoint(tp=name.encode())
        for name in TRACEPOINTS:
            with contextlib.suppress(Exception):
                self._bpf.detach_tracepoint(tp=name.encode())
        self._attached = False

    def close(self) -> None:
        """Detach and unload everything; safe to call twice."""
        self.detach()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    @property
    def bpf(self) -> Any:
        """The loaded bcc program, for feature modules that own their own maps (python/)."""
        return self._bpf

    def __enter__(self) -> KernelTracer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- membership ------------------------------------------------------------------------
    def add_member(self, pid: int, root: int, *, await_exec: bool = False) -> None:
        """Trace `pid` (a process, by tgid) as a member of `root`'s family.

        With `await_exec`, its writes count only from its next exec (see MF_AWAIT_EXEC)."""
        table = self._bpf["members"]
        leaf = table.Leaf()
        leaf.owner = pid
        leaf.root = root
        leaf.exit_code = -1
        leaf.flags = MF_AWAIT_EXEC if await_exec else 0
        table[table.Key(pid)] = leaf

    def forget(self, pids: Iterable[int]) -> None:
        """Drop members whose final counts have been read."""
        table = self._bpf["members"]
        for pid in pids:
            with contextlib.suppress(KeyError):
                del table[table.Key(pid)]

    def members(self) -> dict[int, MemberState]:
        """Counters of every member the kernel knows (vfork children excluded)."""
        states: dict[int, MemberState] = {}
        for key, leaf in self._bpf["members"].items():
            if leaf.flags & MF_VFORK_CHILD:
                continue
            states[key.value] = MemberState(
                pid=key.value,
                root=leaf.root,
                counts=Counts(
                    copies=leaf.copies,
                    file_copies=leaf.file_copies,
                    gup_copies=leaf.gup_copies,
                    reuses=leaf.reuses,
                    zero_fills=leaf.zero_fills,
                ),
                exited=bool(leaf.flags & MF_EXITED),
                exit_code=leaf.exit_code,
                exit_signal=leaf.exit_signal,
            )
        return states

    # ---- records ---------------------------------------------------------------------------
    def _on_proc_event(self, _ctx: object, data: int, _size: int) -> None:
        raw = ctypes.cast(data, ctypes.POINTER(_ProcEvent)).contents
        self._proc_records.append(
            ProcRecord(
                type=raw.type,
                ts_ns=raw.ts,
                pid=raw.pid,
                ppid=raw.ppid,
                root=raw.root,
                exit_code=raw.exit_code,
                exit_signal=raw.exit_signal,
                comm=raw.comm.decode(errors="replace"),
            )
        )

    def poll_proc_records(self, timeout_ms: int) -> list[ProcRecord]:
        """Lifecycle records, waiting up to `timeout_ms` for the first one."""
        if timeout_ms > 0:
            self._bpf.ring_buffer_poll(timeout_ms)
        else:
            self._bpf.ring_buffer_consume()
        records, self._proc_records = self._proc_records, []
        return records

    def drain_events(self) -> np.ndarray:
        """Detail records written since the last drain (EVENT_DTYPE array)."""
        if self._ring is None:
            return np.empty(0, dtype=EVENT_DTYPE)
        return self._ring.drain()

    def open_episodes(self) -> list[tuple[int, object]]:
        """Episodes still open (tid, leaf): read after detach to account for them."""
        return [
            (key.value, leaf)
            for key, leaf in self._bpf["episodes"].items()
            if leaf.state != EP_NONE
        ]

    def stats(self) -> dict[str, int]:
        table = self._bpf["stats"]

        def total(index: int) -> int:
            return int(sum(table[table.Key(index)]))

        return {
            "lost_events": total(STAT_LOST_EVENTS),
            "lost_proc_events": total(STAT_LOST_PROC_EVENTS),
            "members_table_full": total(STAT_MEMBERS_FULL),
            "threads_table_full": total(STAT_THREADS_FULL),
        }
