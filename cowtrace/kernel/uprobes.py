"""Uprobes on the allocator(s) of the members that need them: glibc, jemalloc, tcmalloc.

Every probe is scoped to one process (a perf uprobe opened with that pid, bcc's
`attach_uprobe(pid=...)`): the kernel writes the breakpoint into that process' memory only, so
no other process on the host ever traps on it.  (A uprobe attached to the file without a pid
would trap in every process that calls that malloc, the BPF side filtering afterwards: 2-30 µs
a call, paid by the whole host.)  Measured here (bench/README.md): a probed process' forked
child inherits the breakpoint bytes with its copy of the page, and the kernel removes them from
the child at its first hit (the child is not in the probe's filter): the child pays one trap.
The probe follows its process across exec (it is the task's), and is closed when it exits.

Which members: what a copy is attributed to is the allocation table of the writer as it stood
at the fork (allocs.py), so the probes matter in processes that will fork:
  - the root: before the program runs under `cowtrace run` (the held child; the breakpoints
    land in the new image at exec), or at attach with `--malloc`;
  - a member that execs a new program (it starts a new heap, and may be a server that forks);
  - not forked children (workers, BGSAVE children): they start from their parent's table as
    it stood at the fork, and a server's workers are where the requests, and the allocator
    calls, are.  Adopted descendants (attach) get their glibc heap recovered instead.
So a family of hundreds of workers holds one process' probes; MAX_PROCESSES bounds the rest.

A probed call costs its process microseconds (bench/README.md), so the probes are kept only
while affordable: a process that spends more than BUDGET_FRACTION of its time in them over
BUDGET_WINDOW_S (a server that allocates while answering requests itself, as Redis does) loses
them for good (`charge`), and its allocation table is dropped from then on.  A preloading
master allocates in a burst and then waits while its workers serve: it keeps them.

For each probed process, the objects that hold the malloc it will call: the system's libc, the
allocator libraries the executable names in DT_NEEDED or LD_PRELOAD, the executable itself
when it defines malloc (static programs) or je_malloc (a statically linked, prefixed jemalloc,
as upstream Redis builds it); read from /proc/PID/exe and /proc/PID/maps at an exec or attach
(calls between that exec and the probe's arrival, a few milliseconds, are missed), and again
when the process maps new code (an allocator loaded with dlopen()).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cowtrace.deferred_signals import deferred_stop_signals
from cowtrace.host import procmaps
from cowtrace.host.elf import needed_libraries
from cowtrace.host.rootfs import root_prefix
from cowtrace.kernel.abi import (
    ALLOC_OP_FREE,
    ALLOCATOR_GLIBC,
    ALLOCATOR_JEMALLOC,
    ALLOCATOR_NAMES,
    ALLOCATOR_TCMALLOC,
)
from cowtrace.kernel.prologue import emulated_offset

FUNCTIONS = ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign", "free")
# How many argument registers each entry program reads (rdi, rsi, rdx).
ARGUMENTS = {
    "malloc": 1,
    "free": 1,
    "calloc": 2,
    "realloc": 2,
    "aligned_alloc": 2,
    "memalign": 2,
    "posix_memalign": 3,
}
SYSTEM_LIBC = ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
RETURN_PROGRAM = "cowalloc_return"
PROGRAM_PREFIX = "cowalloc_"  # every allocator program's name starts so (tests' leak check)
# Processes probed at once: each holds up to 13 perf fds per allocator object, and bcc caps
# open probes at 1000 (BCC_PROBE_LIMIT).  Only roots and exec'd members are probed.
MAX_PROCESSES = 24
# What a probed call costs the process here (bench/README.md, 2026-12-04): an allocation's
# entry and return probes about 3.3 µs, a free about 1.7 µs, jemalloc's free (single-stepped)
# about 28 µs; each plus cowtrace's program (0.2-0.6 µs).
ALLOC_COST_S, FREE_COST_S, STEPPED_FREE_COST_S = 4e-6, 2e-6, 30e-6
# The budget: a process whose probes cost it more than BUDGET_FRACTION of the last
# BUDGET_WINDOW_S loses them (a server serving requests: a preload is shorter, or cheaper).
BUDGET_FRACTION, BUDGET_WINDOW_S = 0.25, 0.5
# Closing a perf uprobe waits for an RCU grace period in the kernel, one close at a time:
# about 0.1 s each here, 1.5 s for a jemalloc process' 13.  So closes run off the loop, the
# dearest first (the breakpoint leaves the process at the start of its close).
CLOSE_ORDER = {"free": 0, "malloc": 1}


def allocator_of(path: str) -> int | None:
    """Which allocator a library is, by its file name; None for any other object."""
    name = os.path.basename(path)
    if "jemalloc" in name:
        return ALLOCATOR_JEMALLOC
    if "tcmalloc" in name:
        return ALLOCATOR_TCMALLOC
    if re.fullmatch(r"libc(\.so\.6|-[\d.]+\.so)", name):
        return ALLOCATOR_GLIBC
    return None


@dataclass(frozen=True)
class ProbedObject:
    """One object whose allocator functions can carry uprobes (read once per file)."""

    path: str
    allocator: int
    prefix: str  # "" or "je_" (statically linked, prefixed jemalloc)
    functions: tuple[str, ...]
    addresses: tuple[int, ...]  # each function's address (ELF virtual address)
    offsets: tuple[int, ...]  # where each function's probes sit (prologue.py), bytes in

    @property
    def allocator_name(self) -> str:
        return ALLOCATOR_NAMES[self.allocator]


def _probe_offset(path: str, vaddr: int, arguments: int) -> int:
    """The offset into the function at `vaddr` where its probes cost least (prologue.py)."""
    from bcc import BPF

    try:
        _module, file_offset = BPF._check_path_symbol(path.encode(), b"", vaddr, -1)
        with open(path, "rb") as binary:
            binary.seek(file_offset)
            code = binary.read(32)
    except Exception:  # unreadable: keep the probe at the entry
        return 0
    return emulated_offset(code, arguments)


def _defined_functions(path: str, prefix: str) -> dict[str, int]:
    """Allocator functions `path` defines (name without prefix -> address), by bcc's ELF
    reader."""
    from bcc import BPF

    pattern = f"^{prefix}({'|'.join(FUNCTIONS)})$"
    try:
        # bcc calls back into Python for each symbol: no KeyboardInterrupt in there.
        with deferred_stop_signals():
            found = BPF.get_user_functions_and_addresses(path.encode(), pattern.encode())
    except Exception:  # bcc raises a bare Exception on an unreadable object
        return {}
    return {name.decode()[len(prefix) :]: addr for name, addr in found}


def resolve_object(
    path: str, allocator: int, prefix: str = "", shown: str | None = None
) -> ProbedObject | None:
    """Where the probes of an allocator object go; None when it lacks malloc or free."""
    functions = _defined_functions(path, prefix)
    if "malloc" not in functions or "free" not in functions:
        return None
    names, addresses, offsets = [], [], []
    for function in FUNCTIONS:
        vaddr = functions.get(function)
        if vaddr is None or vaddr in addresses:
            continue  # aliases (glibc's memalign/aligned_alloc) share one probe
        names.append(function)
        addresses.append(vaddr)
        # Both probes go to the first cheaply emulated instruction: nothing before it touches
        # the arguments or %rsp, so [sp] is still the return address the uretprobe hijacks.
        offsets.append(_probe_offset(path, vaddr, ARGUMENTS[function]))
    return ProbedObject(
        shown or path, allocator, prefix, tuple(names), tuple(addresses), tuple(offsets)
    )


def probe_cost(records: np.ndarray) -> dict[int, float]:
    """Estimated seconds the probes cost each process for these allocator records."""
    free = records["op"] == ALLOC_OP_FREE
    stepped = free & (records["allocator"] == ALLOCATOR_JEMALLOC)
    cost = np.where(free, FREE_COST_S, ALLOC_COST_S)
    cost = np.where(stepped, STEPPED_FREE_COST_S, cost)
    pids, inverse = np.unique(records["pid"], return_inverse=True)
    return dict(zip(pids.tolist(), np.bincount(inverse, weights=cost).tolist(), strict=True))


class AllocatorProbes:
    """The allocator uprobes of one loaded program, per probed process.

    `release(pid)` closes a process' probes when it exits; the tracer's detach() closes the
    rest.  `charge(records)` keeps the budget: a process that spends more than
    BUDGET_FRACTION of its time in the probes (a server serving requests) loses them for good;
    from then on its allocation table is unknown (the caller drops it)."""

    def __init__(self, bpf: Any, max_processes: int = MAX_PROCESSES) -> None:
        self._bpf = bpf
        self._max_processes = max_processes
        self._resolved: dict[tuple[int, int, str], ProbedObject | None] = {}  # per file
        # pid -> object -> (close order, bcc event name) of its perf uprobes
        self._attached: dict[int, dict[tuple[int, int, str], list[tuple[int, bytes]]]] = {}
        self._checked: set[tuple[int, int, int]] = set()  # (pid, executable) looked into
        self.objects: list[ProbedObject] = []  # every object probed in some process
        self.errors: list[str] = []
        self._spent: dict[int, deque[tuple[float, float]]] = {}  # pid -> (drain time, cost)
        self.given_up: dict[int, float] = {}  # pid -> share of its time the probes took
        self._lock = threading.Lock()  # bcc's uprobe_fds: attaches here, closes in _closer
        self._closer: ThreadPoolExecutor | None = None
        self._closing: list[Future[None]] = []

    @property
    def processes(self) -> set[int]:
        """The processes that carry probes now."""
        return set(self._attached)

    def probe_events(self, pid: int) -> int:
        """How many perf events (probes) `pid` holds."""
        return sum(len(events) for events in self._attached.get(pid, {}).values())

    # ---- which processes -------------------------------------------------------------------
    def cover_program(
        self, pid: int, executable: str, environ: dict[str, str] | None = None
    ) -> None:
        """`run`: probe, in `pid` (held before its exec), what the program it is about to exec
        will call: libc, its allocator libraries (DT_NEEDED, LD_PRELOAD) and the program itself
        if it carries an allocator.  The breakpoints land in the new image at the exec."""
        if not self._admit(pid):
            return
        env = os.environ if environ is None else environ
        for libc in SYSTEM_LIBC:
            if os.path.exists(libc):
                self.probe(pid, libc, ALLOCATOR_GLIBC)
                break
        preload = re.split(r"[:\s]+", env.get("LD_PRELOAD", ""))
        for library in [*needed_libraries(executable), *filter(None, preload)]:
            allocator = allocator_of(library)
            if allocator is not None:
                self.probe(pid, library, allocator)
        self._probe_executable(pid, executable)

    def cover_process(self, pid: int) -> None:
        """Probe, in `pid`, the allocators it maps, its executable's included (an attached
        root, a member that exec'd)."""
        if not self._admit(pid):
            return
        exe = f"/proc/{pid}/exe"
        with contextlib.suppress(OSError):
            exe = os.readlink(exe)
        self._probe_executable(pid, f"/proc/{pid}/exe", shown=exe)
        root = root_prefix(pid)  # a container's libraries are looked up in its own tree
        for library in (
            needed_libraries(exe, root) if root else needed_libraries(f"/proc/{pid}/exe")
        ):
            allocator = allocator_of(library)
            if allocator is not None:
                self.probe(pid, f"/proc/{pid}/root{library}", allocator, shown=library)
        for line in procmaps.read(pid):
            if line.executable and line.path.startswith("/"):
                allocator = allocator_of(line.path)
                if allocator is not None:
                    self.probe(pid, f"/proc/{pid}/root{line.path}", allocator, shown=line.path)

    def note_code_mapped(self, pids: list[int]) -> None:
        """Processes that mapped new code: a probed one may have dlopen()ed an allocator."""
        for pid in pids:
            if pid in self._attached:
                self.cover_process(pid)

    def charge(self, records: np.ndarray, now: float | None = None) -> list[int]:
        """Account for drained allocator records; the processes over budget lose their probes
        (returned, so that the caller stops trusting their allocation tables)."""
        now = time.monotonic() if now is None else now
        over = []
        for pid, cost in probe_cost(records).items():
            if pid not in self._attached:
                continue
            spent = self._spent.setdefault(pid, deque())
            spent.append((now, cost))
            while spent and spent[0][0] <= now - BUDGET_WINDOW_S:
                spent.popleft()
            share = sum(c for _, c in spent) / BUDGET_WINDOW_S
            if share > BUDGET_FRACTION:
                self.given_up[pid] = share
                self.release(pid)
                over.append(pid)
        return over

    def release(self, pid: int) -> None:
        """Close `pid`'s probes (it exited, or over budget): no per-process probe outlives its
        process.  The closes run in the background (CLOSE_ORDER); `wait()` for them."""
        self._spent.pop(pid, None)
        self._checked = {key for key in self._checked if key[0] != pid}
        events = sorted(e for found in self._attached.pop(pid, {}).values() for e in found)
        if not events:
            return
        if self._closer is None:
            self._closer = ThreadPoolExecutor(1, thread_name_prefix="cowtrace-uprobe-close")
        self._closing = [f for f in self._closing if not f.done()]
        self._closing.append(self._closer.submit(self._close, [ev for _, ev in events]))

    def _close(self, events: list[bytes]) -> None:
        for ev_name in events:
            with self._lock, contextlib.suppress(Exception):  # bcc: bare Exception if gone
                self._bpf.detach_uprobe_event(ev_name)

    def wait(self) -> None:
        """Until every release has closed its probes (before the tracer detaches the rest)."""
        for future in self._closing:
            future.result()
        self._closing = []
        if self._closer is not None:
            self._closer.shutdown(wait=True)
            self._closer = None

    def _admit(self, pid: int) -> bool:
        if pid in self._attached:
            return True
        if pid in self.given_up:
            return False
        if len(self._attached) >= self._max_processes:
            self.errors.append(f"pid {pid}: not probed, {self._max_processes} processes are")
            return False
        self._attached[pid] = {}
        return True

    def _probe_executable(self, pid: int, path: str, shown: str | None = None) -> None:
        """Probe an executable that carries its own allocator; each file once per process."""
        try:
            st = os.stat(path)
        except OSError:
            return
        if (pid, st.st_dev, st.st_ino) in self._checked:
            return
        self._checked.add((pid, st.st_dev, st.st_ino))
        if _defined_functions(path, "je_").get("malloc"):
            self.probe(pid, path, ALLOCATOR_JEMALLOC, prefix="je_", shown=shown)
        elif _defined_functions(path, "").get("malloc"):
            self.probe(pid, path, ALLOCATOR_GLIBC, shown=shown)

    # ---- attaching -------------------------------------------------------------------------
    def probe(
        self, pid: int, path: str, allocator: int, *, prefix: str = "", shown: str | None = None
    ) -> None:
        """Attach entry probes (and return probes) to every allocator function `path` defines,
        in `pid` only; once per process, file and prefix, however many paths lead to it."""
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino, prefix)
        mine = self._attached.setdefault(pid, {})
        if key in mine:
            return
        if key not in self._resolved:
            self._resolved[key] = resolve_object(path, allocator, prefix, shown)
        found = self._resolved[key]
        mine[key] = []
        if found is None:
            return
        name = found.allocator_name
        for function, vaddr, offset in zip(
            found.functions, found.addresses, found.offsets, strict=True
        ):
            self._lock.acquire()
            before = set(self._bpf.uprobe_fds)
            try:
                self._bpf.attach_uprobe(
                    name=path.encode(),
                    addr=vaddr + offset,
                    fn_name=f"{PROGRAM_PREFIX}{name}_{function}".encode(),
                    pid=pid,
                )
                if function != "free":
                    self._bpf.attach_uretprobe(
                        name=path.encode(),
                        addr=vaddr + offset,
                        fn_name=RETURN_PROGRAM.encode(),
                        pid=pid,
                    )
            except Exception as error:  # bcc: bare Exception when an attach fails
                self.errors.append(f"{shown or path}:{function} in {pid}: {error}")
            finally:
                order = CLOSE_ORDER.get(function, len(CLOSE_ORDER))
                mine[key].extend((order, ev) for ev in set(self._bpf.uprobe_fds) - before)
                self._lock.release()
        if found not in self.objects:
            self.objects.append(found)
