"""Reading a traced process' memory, without changing what the kernel does with its pages.

cowtrace reads other processes' memory through /proc/PID/mem (glibc's heap at attach, CPython
code objects), here and nowhere else; it runs as root.  The kernel marks every page read that
way as accessed, which queues it in a per-CPU LRU batch, and a page in a batch carries an extra
reference until the batch is drained.  A write fault in the traced process on such a page
cannot reuse it (the reuse test drains only the faulting CPU's batch, then refuses a page with
extra references) and copies it instead: cowtrace would have caused a copy that, untraced,
would not happen.  It was seen: a master's write that should have reused its page copied it,
after the heap walk had read it.

So every burst of reads ends by draining the LRU batches of all CPUs.  move_pages(2) of one
page of our own to the node it is already on does that first (lru_add_drain_all) and moves
nothing: the cheapest way user space has to ask for it.

And nothing here reads with process_vm_readv(2), though it reads many runs in one call: it
pins the pages it reads (FOLL_PIN), and the kernel will not pin an anonymous page that is
still shared copy-on-write without first unsharing it: it copies the page into the traced
process, on our behalf.  A read of a code object in a gunicorn master copied the page that
held it, exactly the copy cowtrace is there to report, made by cowtrace, and counted against
cowtrace's own task (tests/unit/test_remote_reads.py measures it on smaps).  /proc/PID/mem
takes references without pinning, and a shared page stays shared.

What a read still does: it faults in a page the process never touched (the zero page, for
anonymous memory), so the process' own first write there is a zero-fill (counted as one, by
cowtrace and the kernel alike) instead of a fresh page, which no one counts.  The copies are
unchanged.  The reads that can reach such pages are the pools of copied pages, read whole
(python/copied_types.py): only the part of a size class' current pool that pymalloc has not
carved yet is untouched, a few pages per process.  On the multiprocessing example the
family's zero-fills read 12 with Python stacks and types and 12 without (3 runs each).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
from collections.abc import Iterator

from cowtrace.host.memory import PAGE_SIZE, USER_ADDRESS_END

SYS_MOVE_PAGES = 279  # x86-64
MPOL_MF_MOVE = 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)
SMALL_READ = 16384  # bytes read keeping the GIL at most (MemoryFile.read)
_pread = ctypes.PyDLL(None).pread  # PyDLL: called with the GIL held (MemoryFile.read)
_pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
_pread.restype = ctypes.c_ssize_t
_scratch: mmap.mmap | None = None
_address = 0


def drain_lru_batches() -> None:
    """Drain every CPU's LRU batches (best effort: nothing happens where move_pages fails)."""
    global _scratch, _address
    if _scratch is None:
        _scratch = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        _scratch[0] = 1
        _address = ctypes.addressof(ctypes.c_char.from_buffer(_scratch))
    pages = (ctypes.c_void_p * 1)(_address)
    status = (ctypes.c_int * 1)(-1)
    # Where the page is now, then "move" it there.
    if _libc.syscall(SYS_MOVE_PAGES, 0, 1, pages, None, status, 0) != 0 or status[0] < 0:
        return
    nodes = (ctypes.c_int * 1)(status[0])
    _libc.syscall(SYS_MOVE_PAGES, 0, 1, pages, nodes, status, MPOL_MF_MOVE)


@contextlib.contextmanager
def drained_reads() -> Iterator[None]:
    """Reads of another process' memory; the LRU batches they filled are drained after."""
    try:
        yield
    finally:
        drain_lru_batches()


class MemoryFile:
    """One process' memory, through its /proc/PID/mem kept open for many reads (a heap walk);
    raises OSError when the process is gone or not ours to read."""

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, addr: int, size: int) -> bytes:
        """Up to `size` bytes at `addr`: fewer where the mapping ends, b"" where nothing is
        readable.  Callers drain the LRU batches after a burst (:func:`drained_reads`).

        A small read is made keeping the GIL (microseconds): os.pread lets go of it, and a
        thread that lets go waits to get it back for as long as another thread computes
        (the interpreter's switch interval, 5 ms): the thread naming new Python stacks
        (python/kernel.NewStackWatcher) fell seconds behind that way.  A large read (pools
        by the run) lets go, as it takes a while."""
        if size > SMALL_READ:
            try:
                return os.pread(self.fd, size, addr)
            except (OSError, OverflowError, ValueError):  # OverflowError: a pointer >= 2**63
                return b""
        if not 0 <= addr < 2**63 or size < 0:  # a garbage pointer: no such offset
            return b""
        buffer = ctypes.create_string_buffer(size)
        got = _pread(self.fd, buffer, size, addr)
        return buffer.raw[:got] if got > 0 else b""


def read(pid: int, addr: int, size: int) -> bytes | None:
    """`size` bytes at `addr` in `pid`, or None if the process or the page is gone (or the
    address, read from another process' memory, is not a user address at all)."""
    if not 0 < addr < USER_ADDRESS_END or size <= 0:
        return None
    try:
        memory = MemoryFile(pid)
    except OSError:
        return None
    try:
        data = memory.read(addr, size)
    finally:
        memory.close()
    return data if len(data) == size else None


def read_runs(pid: int, runs: list[tuple[int, int]]) -> list[bytes | None]:
    """Several (addr, size) runs of `pid`'s memory through one open of /proc/PID/mem, one
    pread each (a run of pages in one read); None for a run that could not be read whole."""
    try:
        memory = MemoryFile(pid)
    except OSError:
        return [None] * len(runs)
    try:
        return _read_runs_from(memory, runs)
    finally:
        memory.close()


def _read_runs_from(memory: MemoryFile, runs: list[tuple[int, int]]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for addr, size in runs:
        if not 0 < addr < USER_ADDRESS_END or size <= 0:
            out.append(None)
            continue
        data = memory.read(addr, size)  # callers drain the LRU batches
        out.append(data if len(data) == size else None)
    return out


def close_files(files: dict[int, MemoryFile | None]) -> None:
    """Close the memory files readers kept open, and forget them."""
    for memory in files.values():
        if memory is not None:
            memory.close()
    files.clear()


class Reader:
    """Reads from the first of several processes that still has the memory (a forked family
    shares its pre-fork objects at the same addresses, so a parent can stand in for a child
    that already exited).

    With `keep_open`, each process' /proc/PID/mem is opened once and kept until `close()`
    (a burst of many small reads: the type objects of a drain's copied pages), instead of an
    open and a close around every read; in `files` when given, shared by several readers
    and closed by its owner (:func:`close_files`), not by `close()`."""

    def __init__(
        self,
        pids: list[int],
        *,
        keep_open: bool = False,
        files: dict[int, MemoryFile | None] | None = None,
    ) -> None:
        self.pids = pids
        self.keep_open = keep_open or files is not None
        self._owned = files is None
        self._files: dict[int, MemoryFile | None] = {} if files is None else files

    def _file(self, pid: int) -> MemoryFile | None:
        if pid not in self._files:
            try:
                self._files[pid] = MemoryFile(pid)
            except OSError:
                self._files[pid] = None
        return self._files[pid]

    def close(self) -> None:
        if self._owned:
            close_files(self._files)

    def first(self) -> Reader:
        """A reader of the first process only (the writer of a new stack: its objects are the
        ones its stack names; another process may hold another object at the address),
        sharing this reader's open files."""
        return self.only(self.pids[0])

    def only(self, pid: int) -> Reader:
        """A reader of `pid` alone, sharing this reader's open files."""
        if not self.keep_open:
            return Reader([pid])
        return Reader([pid], files=self._files)

    def read(self, addr: int, size: int) -> bytes | None:
        if not 0 < addr < USER_ADDRESS_END or size <= 0:
            return None
        for pid in self.pids:
            if self.keep_open:
                memory = self._file(pid)
                data = memory.read(addr, size) if memory is not None else b""
                if len(data) == size:
                    return data
                continue
            found = read(pid, addr, size)
            if found is not None:
                return found
        return None

    def read_many(self, runs: list[tuple[int, int]]) -> list[bytes | None]:
        """Each run from the first process that has it whole: one open of each process' memory
        file asked (kept with `keep_open`), then one small pread per run, microseconds each
        (not one process_vm_readv for them all: see the module's docstring)."""
        out: list[bytes | None] = [None] * len(runs)
        for pid in self.pids:
            missing = [i for i, data in enumerate(out) if data is None]
            if not missing:
                break
            wanted = [runs[i] for i in missing]
            if self.keep_open:
                memory = self._file(pid)
                got = _read_runs_from(memory, wanted) if memory is not None else []
            else:
                got = read_runs(pid, wanted)
            for i, data in zip(missing, got, strict=False):
                out[i] = data
        return out

    def u64(self, addr: int) -> int | None:
        data = self.read(addr, 8)
        return None if data is None else struct.unpack("<Q", data)[0]

    def i32(self, addr: int) -> int | None:
        data = self.read(addr, 4)
        return None if data is None else struct.unpack("<i", data)[0]

    def cstring(self, addr: int, limit: int = 256) -> str | None:
        data = self.read(addr, limit)
        if data is None:
            data = self.read(addr, 32)  # near the end of a mapping
        if data is None or b"\0" not in data:
            return None
        return data[: data.index(b"\0")].decode(errors="replace")
