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
