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

from cowtrace.errors import CowtraceError
from cowtrace.kernel.abi import (
    ALLOC_EVENT_DTYPE,
    BATCH_DTYPE,
    EP_NONE,
    EVENT_DTYPE,
    MF_AWAIT_EXEC,
    MF_EXITED,
    MF_VFORK_CHILD,
    PE_EXIT,
    PROC_EVENT_DTYPE,
    STAT_ALLOC_STACK_ERRORS,
    STAT_LOST_ALLOC_EVENTS,
    STAT_LOST_EVENTS,
    STAT_LOST_MAP_EVENTS,
    STAT_LOST_PROC_EVENTS,
    STAT_MEMBERS_FULL,
    STAT_STACK_ERRORS,
    STAT_THREADS_FULL,
    detail_records,
    read_record,
)
from cowtrace.kernel.bpfsource import compile_program
from cowtrace.kernel.calibrate import load_or_calibrate
from cowtrace.kernel.kallsyms import KernelSymbols
from cowtrace.kernel.progrun import online_cpus, run_on_cpu
from cowtrace.kernel.ringbuf import FixedRecordRing
from cowtrace.model import Counts

# Tail-call targets of the fault programs, by their index in writer_stack_progs.
WRITER_STACK_PROGRAMS = ("writer_stacks_user", "writer_stacks_kernel")
# Every hook of cowtrace.bpf.c, so that they can be detached before the final read.
# No syscalls:* tracepoint, ever: one puts every task on the host on the slow syscall path.
RAW_TRACEPOINTS = (
    "page_fault_user",
    "page_fault_kernel",
    "mm_page_alloc",
    "rss_stat",
    "mmap_lock_acquire_returned",
    "signal_generate",
    "task_rename",
)
TRACEPOINTS = (
    "task:task_newtask",
    "sched:sched_process_exec",
    "signal:signal_generate",
    "signal:signal_deliver",
    "sched:sched_process_exit",
    "sched:sched_process_free",
)


@dataclass
class TracerConfig:
    """Table sizes.  The fault ring holds 41 bytes per event (batches of 16 records of 40
    bytes, and a header): 16 MiB is ~400k events, a few seconds of the worst copy storm, so a
    consumer that falls behind briefly loses nothing.  The singles ring takes the records made
    outside the fault path (exec, exit, get_user_pages copies), 48 bytes each."""

    ring_bytes: int = 16 << 20
    single_ring_bytes: int = 2 << 20
    max_members: int = 16384
    max_threads: int = 65536  # a power of two (episode slots are indexed by tid bits)
    stacks: bool = True  # native user stacks of copies and allocations (--no-stacks: off)
    stack_entries: int = 32768  # stacks per map (32 frames each); a power of two
    alloc_ring_bytes: int = 0  # 64 bytes per allocator call; 0: no allocator probes planned
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


def _power_of_two_pages(size: int) -> int:
    pages = max(1, size // mmap.PAGESIZE)
    return 1 << (pages - 1).bit_length()


class KernelTracer:
    """Owns the BPF program: load, membership, counters, detail records, teardown."""

    def __init__(self, config: TracerConfig | None = None) -> None:
        self.config = config or TracerConfig()
        self._bpf = None
        self._ring: FixedRecordRing | None = None
        self._singles: FixedRecordRing | None = None
        self._flush_fd: int | None = None
        self._cpus = online_cpus()
        self._alloc_ring: FixedRecordRing | None = None
        self._proc_records: list[ProcRecord] = []
        self._attached = False

    # ---- set-up and teardown ---------------------------------------------------------------
    def open(self) -> None:
        """Calibrate (cached), compile, load and attach.  Raises CowtraceError on failure."""
        symbols = KernelSymbols.load()
        calibration = load_or_calibrate(symbols)
        ring_pages = _power_of_two_pages(self.config.ring_bytes)
        single_pages = _power_of_two_pages(self.config.single_ring_bytes)
        alloc_pages = _power_of_two_pages(self.config.alloc_ring_bytes)
        cflags = calibration.cflags(symbols) + [
            f"-DMAX_MEMBERS={self.config.max_members}",
            f"-DMAX_THREADS={self.config.max_threads}",
            f"-DFAULT_RING_PAGES={ring_pages}",
            f"-DSINGLE_RING_PAGES={single_pages}",
            "-DPROC_RING_PAGES=64",
            f"-DALLOC_RING_PAGES={alloc_pages}",
            f"-DSTACK_ENTRIES={self.config.stack_entries if self.config.stacks else 1}",
            f"-DPYTHON_STACKS={int(self.config.python_stacks)}",
        ]
        if not self.config.stacks:
            cflags.append("-DNO_STACKS")
        self._bpf = compile_program("cowtrace.bpf.c", cflags)
        self._attached = True
        if self.config.stacks or self.config.python_stacks:
            self._install_writer_stack_programs()
        page = mmap.PAGESIZE
        self._ring = FixedRecordRing(
            self._bpf["fault_events"].map_fd, ring_pages * page, dtype=BATCH_DTYPE
        )
        self._singles = FixedRecordRing(self._bpf["fault_singles"].map_fd, single_pages * page)
        self._flush_fd = self._load_helper("flush_fault_batch")
        self._alloc_ring = FixedRecordRing(
            self._bpf["alloc_events"].map_fd, alloc_pages * page, dtype=ALLOC_EVENT_DTYPE
        )
        self._bpf["proc_events"].open_ring_buffer(self._on_proc_event)

    def _load_helper(self, name: str) -> int:
        """Load one of the program's functions that is attached nowhere (a tail-call target,
        the batch flush); its fd."""
        from bcc import BPF

        try:
            return self._bpf.load_func(name.encode(), BPF.RAW_TRACEPOINT).fd
        except Exception as error:  # bcc raises a bare Exception when loading fails
            raise CowtraceError(
                f"could not load the BPF program {name}: {error}", hint="cowtrace doctor"
            ) from error

    def _install_writer_stack_programs(self) -> None:
        """Load the tail-call targets that take a fault's writer stacks (WRITER_STACK_PROGRAMS,
        in writer_stack_progs' order) and put them in the program array the fault programs
        call.  The array holds its own references: the programs live as long as it does."""
        table = self._bpf["writer_stack_progs"]
        for index, name in enumerate(WRITER_STACK_PROGRAMS):
            table[ctypes.c_int(index)] = ctypes.c_int(self._load_helper(name))

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
        for ev_name in list(self._bpf.uprobe_fds):
            with contextlib.suppress(Exception):
                self._bpf.detach_uprobe_event(ev_name)
        self._attached = False

    def close(self) -> None:
        """Detach and unload everything; safe to call twice."""
        self.detach()
        for ring in (self._ring, self._singles, self._alloc_ring):
            if ring is not None:
                ring.close()
        self._ring = self._singles = self._alloc_ring = None
        self._flush_fd = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    @property
    def stack_entries(self) -> int:
        """STACK_ENTRIES the program was built with: where fault_stacks' ids begin."""
        return self.config.stack_entries if self.config.stacks else 1

    @property
    def bpf(self) -> Any:
        """The loaded bcc program (None before open and after close), for the modules that own
        maps or probes of their own: kernel/stacks.py, kernel/uprobes.py, python/."""
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
        self._set_member_bit(pid, True)
        self._move_member_generation()

    def _set_member_bit(self, pid: int, member: bool) -> None:
        """User space's half of the BPF membership filter (member_bits_user): a member's bit
        is set before any hook can need it, cleared once the member is forgotten.  Only this
        process writes this bitmap, so a read-modify-write of a word races with no one."""
        bits = self._bpf["member_bits_user"]
        key = bits.Key(pid >> 6)
        word = bits[key].value
        mask = 1 << (pid & 63)
        bits[key] = bits.Leaf(word | mask if member else word & ~mask)

    def _move_member_generation(self) -> None:
        """Members were added or forgotten here: the fault path's threads, which remember
        whether they are a member's (episode_state.member_ok in the BPF program), look the
        members table up again.  Only this process writes the counter."""
        generation = self._bpf["member_generation"]
        key = generation.Key(0)
        generation[key] = generation.Leaf(generation[key].value + 1)

    def forget(self, pids: Iterable[int]) -> None:
        """Drop members whose final counts have been read."""
        table = self._bpf["members"]
        pids = list(pids)
        for pid in pids:
            with contextlib.suppress(KeyError):
                del table[table.Key(pid)]
            self._set_member_bit(pid, False)
        if pids:
            self._move_member_generation()

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
                    wp_retries=leaf.wp_retries,
                ),
                exited=bool(leaf.flags & MF_EXITED),
                exit_code=leaf.exit_code,
                exit_signal=leaf.exit_signal,
            )
        return states

    # ---- records ---------------------------------------------------------------------------
    def _on_proc_event(self, _ctx: object, data: int, _size: int) -> None:
        raw = read_record(data, PROC_EVENT_DTYPE)
        exit_code, exit_signal = int(raw["exit_code"]), int(raw["exit_signal"])
        if int(raw["type"]) == PE_EXIT:
            exit_code, exit_signal = self._exit_status(int(raw["pid"]), exit_code, exit_signal)
        self._proc_records.append(
            ProcRecord(
                type=int(raw["type"]),
                ts_ns=int(raw["ts"]),
                pid=int(raw["pid"]),
                ppid=int(raw["ppid"]),
                root=int(raw["root"]),
                exit_code=exit_code,
                exit_signal=exit_signal,
                comm=bytes(raw["comm"]).split(b"\0", 1)[0].decode(errors="replace"),
            )
        )

    def _exit_status(self, pid: int, code: int, signal: int) -> tuple[int, int]:
        """The exit status as the members map has it now.  The PE_EXIT record is made before
        the kernel sends the parent its SIGCHLD, which is where the code is learnt (see
        signal_generate in the BPF program); by the time user space reads the record, the
        code is usually known.  The PE_FREE record always carries it."""
        table = self._bpf["members"]
        try:
            leaf = table[table.Key(pid)]
        except KeyError:
            return code, signal
        return leaf.exit_code, leaf.exit_signal

    def poll_proc_records(self, timeout_ms: int) -> list[ProcRecord]:
        """Lifecycle records, waiting up to `timeout_ms` for the first one."""
        if timeout_ms > 0:
            self._bpf.ring_buffer_poll(timeout_ms)
        else:
            self._bpf.ring_buffer_consume()
        records, self._proc_records = self._proc_records, []
        return records

    def drain_events(self) -> np.ndarray:
        """Detail records written since the last drain (EVENT_DTYPE array, not in time order:
        each CPU's batches come out as a whole).  Every CPU's partly filled batch is flushed
        first, so every record the kernel made before this call is in it."""
        if self._ring is None or self._singles is None:
            return np.empty(0, dtype=EVENT_DTYPE)
        if self._flush_fd is not None:
            for cpu in self._cpus:
                run_on_cpu(self._flush_fd, cpu)
        return detail_records(self._ring.drain(), self._singles.drain())

    def clear_map_changed(self, pid: int) -> None:
        """Re-arm `pid`'s PE_MAPS record: called just before its /proc/PID/maps is read, so
        that a change made after this call sends a new record (see "map changes" in the BPF
        program)."""
        table = self._bpf["map_dirty"]
        with contextlib.suppress(KeyError):
            del table[table.Key(pid)]

    def drain_alloc_events(self) -> np.ndarray:
        """Allocator calls of members since the last drain (ALLOC_EVENT_DTYPE array)."""
        if self._alloc_ring is None:
            return np.empty(0, dtype=ALLOC_EVENT_DTYPE)
        return self._alloc_ring.drain()

    def open_episodes(self) -> list[tuple[int, object]]:
        """Episodes still open (tid, leaf): read after detach to account for them.  They are in
        episode_slots (a slot is taken when its tid is not 0) or, for threads whose slot was
        taken, in the episodes hash."""
        slots = [
            (int(leaf.tid), leaf)
            for _key, leaf in self._bpf["episode_slots"].items_lookup_batch()
            if leaf.tid != 0 and leaf.state != EP_NONE
        ]
        return slots + [
            (key.value, leaf)
            for key, leaf in self._bpf["episodes"].items()
            if leaf.state != EP_NONE
        ]

    def program_fds(self) -> dict[str, int]:
        """Loaded program name -> fd: the metrics read each program's run time from fdinfo."""
        if self._bpf is None:
            return {}
        return {
            name.decode() if isinstance(name, bytes) else str(name): function.fd
            for name, function in self._bpf.funcs.items()
        }

    def host_renames(self) -> int:
        """Execs and comm changes on the whole host since the program was loaded: what can
        bring a new process to match the agent's --comm (agent/loop.py)."""
        table = self._bpf["host_renames"]
        return int(table[table.Key(0)].value)

    def stats(self) -> dict[str, int]:
        table = self._bpf["stats"]

        def total(index: int) -> int:
            return int(sum(table[table.Key(index)]))

        return {
            "lost_events": total(STAT_LOST_EVENTS),
            "lost_proc_events": total(STAT_LOST_PROC_EVENTS),
            "members_table_full": total(STAT_MEMBERS_FULL),
            "threads_table_full": total(STAT_THREADS_FULL),
            "stack_errors": total(STAT_STACK_ERRORS),
            "lost_map_events": total(STAT_LOST_MAP_EVENTS),
            "lost_alloc_events": total(STAT_LOST_ALLOC_EVENTS),
            "alloc_stack_errors": total(STAT_ALLOC_STACK_ERRORS),
        }
