"""Reading a process' memory: a garbage address is unreadable, never an exception."""

from __future__ import annotations

import ctypes
import os

from cowtrace.python import procmem


def test_read_own_memory() -> None:
    buffer = ctypes.create_string_buffer(b"cowtrace", 8)
    assert procmem.read(os.getpid(), ctypes.addressof(buffer), 8) == b"cowtrace"


def test_addresses_past_the_signed_range_are_unreadable() -> None:
    """A pointer read from a changing object can be anything: pread's offset is signed, so an
    address >= 2**63 raised OverflowError out of a ring buffer callback (ending the session)."""
    reader = procmem.Reader([os.getpid()])
    assert procmem.read(os.getpid(), (1 << 64) - 8, 8) is None
    assert reader.u64(0xFFFF_FFFF_FFFF_FFF0 + 0x18) is None  # type_addr + TP_NAME overflow
    assert reader.u64(0) is None
