"""cowtrace/host/remote_reads.py: reads of a traced process' memory never raise on a bad
address."""

from __future__ import annotations

import ctypes
import os

from cowtrace.host import remote_reads


def test_reads_own_memory():
    buf = ctypes.create_string_buffer(b"cowtrace!", 16)
    assert remote_reads.read(os.getpid(), ctypes.addressof(buf), 9) == b"cowtrace!"


def test_garbage_pointer_reads_nothing():
    # A pointer read from a stale frame can be anything: past off_t's range pread would raise
    # OverflowError (found on the multiprocessing example: the ring callback lost the stack).
    for addr in (1 << 63, (1 << 64) - 8, (1 << 63) - 4, -8):
        assert remote_reads.read(os.getpid(), addr, 8) is None
    assert remote_reads.Reader([os.getpid()]).u64(0xFFFF_FFFF_FFFF_FFF0) is None


def test_read_own_memory() -> None:
    buffer = ctypes.create_string_buffer(b"cowtrace", 8)
    assert remote_reads.read(os.getpid(), ctypes.addressof(buffer), 8) == b"cowtrace"


def test_addresses_past_the_signed_range_are_unreadable() -> None:
    """A pointer read from a changing object can be anything: pread's offset is signed, so an
    address >= 2**63 raised OverflowError out of a ring buffer callback (ending the session)."""
    reader = remote_reads.Reader([os.getpid()])
    assert remote_reads.read(os.getpid(), (1 << 64) - 8, 8) is None
    assert reader.u64(0xFFFF_FFFF_FFFF_FFF0 + 0x18) is None  # type_addr + TP_NAME overflow
    assert reader.u64(0) is None


def test_scattered_reads_skip_what_cannot_be_read() -> None:
    """Many small reads in one go: an unmapped address, a garbage one or one past the user
    range fails alone, the others are read."""
    import mmap

    import numpy as np

    buffers = [ctypes.create_string_buffer(bytes([i]) * 16, 16) for i in range(1, 4)]
    addrs = [ctypes.addressof(b) for b in buffers]
    hole = mmap.mmap(-1, 4096)
    unmapped = ctypes.addressof(ctypes.c_char.from_buffer(hole))  # unmapped below
    wanted = [addrs[0], 8, addrs[1], (1 << 64) - 16, addrs[2]]
    data, ok = remote_reads.read_scattered(os.getpid(), [*wanted, addrs[0]], 16)
    assert ok.tolist() == [True, False, True, False, True, True]
    assert [bytes(row) for row in data[ok]] == [bytes([i]) * 16 for i in (1, 2, 3, 1)]
    hole.close()
    data, ok = remote_reads.read_scattered(os.getpid(), [addrs[0], unmapped, addrs[1]], 16)
    assert ok.tolist() == [True, False, True]
    assert bytes(data[2]) == bytes([2]) * 16
    data, ok = remote_reads.read_scattered(os.getpid(), [], 16)
    assert data.shape == (0, 16) and not ok.any()
    assert not remote_reads.read_scattered(2**22 + 7, addrs, 16)[1].any()  # no such process
    assert np.array_equal(remote_reads.read_scattered(os.getpid(), addrs, 8)[0][0], [1] * 8)
