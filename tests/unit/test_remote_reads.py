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


def test_read_many_reads_every_readable_run_in_order() -> None:
    """One process_vm_readv stops at the first run it cannot read: the runs after it are read
    by the next call; an unreadable run (unmapped, null, past the user range) is None."""
    buffer = ctypes.create_string_buffer(b"copy-on-write", 13)
    at = ctypes.addressof(buffer)
    runs = [(at, 4), (8, 4), (at + 5, 2), (0, 3), (1 << 63, 8), (at + 8, 5), (4096, 8)]
    assert remote_reads.read_many(os.getpid(), runs) == [
        b"copy",
        None,
        b"on",
        None,
        None,
        b"write",
        None,
    ]
    assert remote_reads.read_many(os.getpid(), [(at, 4)] * 2000) == [b"copy"] * 2000  # > IOV_MAX


def test_read_many_of_a_process_gone_reads_nothing() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert remote_reads.read_many(pid, [(4096, 8)]) == [None]
    assert remote_reads.Reader([pid, os.getpid()]).read_many([(0, 8)]) == [None]
