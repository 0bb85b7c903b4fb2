"""Reading a traced process' memory without changing what the kernel does with its pages.

cowtrace reads other processes' memory through /proc/PID/mem (glibc's heap at attach, CPython
code objects).  The kernel marks every page read that way as accessed, which queues it in a
per-CPU LRU batch, and a page in a batch carries an extra reference until the batch is
drained.  A write fault in the traced process on such a page cannot reuse it (the reuse test
drains only the faulting CPU's batch, then refuses a page with extra references) and copies it
instead: cowtrace would have caused a copy that, untraced, would not happen.  It was seen: a
master's write that should have reused its page copied it, after the heap walk had read it.

So every burst of reads ends by draining the LRU batches of all CPUs.  move_pages(2) of one
page of our own to the node it is already on does that first (lru_add_drain_all) and moves
nothing: the cheapest way user space has to ask for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
from collections.abc import Iterator

SYS_MOVE_PAGES = 279  # x86-64
MPOL_MF_MOVE = 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)
_scratch: mmap.mmap | None = None
_address = 0


def drain_lru_batches() -> None:
    """Drain every CPU's LRU batches (best effort: nothing happens where move_pages fails)."""
    global _scratch, _address
    if _scratch is None:
        _scratch = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
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
