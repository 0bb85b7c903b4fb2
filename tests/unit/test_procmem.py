"""cowtrace/python/procmem.py: reads of a traced process' memory never raise on a bad address."""

from __future__ import annotations

import ctypes
import os

from cowtrace.python import procmem


def test_reads_own_memory():
    buf = ctypes.create_string_buffer(b"cowtrace!", 16)
    assert procmem.read(os.getpid(), ctypes.addressof(buf), 9) == b"cowtrace!"


def test_garbage_pointer_reads_nothing():
    # A pointer read from a stale frame can be anything: past off_t's range pread would raise
    # OverflowError (found on the multiprocessing example: the ring callback lost the stack).
    for addr in (1 << 63, (1 << 64) - 8, (1 << 63) - 4, -8):
        assert procmem.read(os.getpid(), addr, 8) is None
    assert procmem.Reader([os.getpid()]).u64(0xFFFF_FFFF_FFFF_FFF0) is None
