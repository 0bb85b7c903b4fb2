"""cowtrace/host/remote_reads.py: reads of a traced process' memory never raise on a bad
address."""

from __future__ import annotations

import ctypes
import mmap
import os

from cowtrace.host import remote_reads
from cowtrace.host.memory import PAGE_SIZE


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
    """An unreadable run (unmapped, null, past the user range) is None; the runs after it are
    read all the same, from an open memory file or from one opened for the call."""
    buffer = ctypes.create_string_buffer(b"copy-on-write", 13)
    at = ctypes.addressof(buffer)
    runs = [(at, 4), (8, 4), (at + 5, 2), (0, 3), (1 << 63, 8), (at + 8, 5), (4096, 8)]
    expected = [b"copy", None, b"on", None, None, b"write", None]
    assert remote_reads.Reader([os.getpid()]).read_many(runs) == expected
    kept = remote_reads.Reader([os.getpid()], keep_open=True)
    try:
        assert kept.read_many(runs) == expected
        assert kept.read_many([(at, 4)] * 2000) == [b"copy"] * 2000
    finally:
        kept.close()


def test_read_many_of_a_process_gone_reads_nothing() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert remote_reads.Reader([pid]).read_many([(4096, 8)]) == [None]
    assert remote_reads.Reader([pid, os.getpid()]).read_many([(0, 8)]) == [None]


def _private_dirty_kib(pid: int, start: int, end: int) -> int:
    """Private_Dirty of `pid`'s mappings overlapping [start, end), from smaps."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(x, 16) for x in head.split("-"))
                inside = low < end and start < high
            elif inside and head == "Private_Dirty:":
                total += int(line.split()[1])
    return total


def test_reading_a_child_leaves_its_shared_pages_shared() -> None:
    """A child shares 32 written pages copy-on-write with us; reading all of them, with every
    read of this module, leaves them shared: no Private_Dirty in the child.  process_vm_readv
    (the fingerprint reads of stop 21) pinned them, and the kernel unshared each one first: the
    child then held every page read privately (160 KiB measured here), copies made by the
    reader."""
    pages = 32
    area = mmap.mmap(-1, pages * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for page in range(pages):
        area[page * PAGE_SIZE] = page + 1
    start = ctypes.addressof(ctypes.c_char.from_buffer(area))
    end = start + pages * PAGE_SIZE
    ready, release = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(ready, 1)
        os._exit(0)
    try:
        assert _private_dirty_kib(pid, start, end) == 0
        runs = [(start + page * PAGE_SIZE, 64) for page in range(pages)]
        reader = remote_reads.Reader([pid], keep_open=True)
        try:
            got = reader.read_many(runs)
            assert [data[0] for data in got if data] == list(range(1, pages + 1))
            assert reader.read(start, pages * PAGE_SIZE) is not None
        finally:
            reader.close()
        assert remote_reads.Reader([pid]).read_many(runs[:1]) == [got[0]]
        assert remote_reads.read_runs(pid, [(start, pages * PAGE_SIZE)])[0] is not None
        remote_reads.drain_lru_batches()
        assert _private_dirty_kib(pid, start, end) == 0
    finally:
        os.write(release, b"x")
        os.waitpid(pid, 0)
        os.close(ready)
        os.close(release)
