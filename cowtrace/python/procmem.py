"""Reading a traced process' memory through /proc/PID/mem (cowtrace runs as root)."""

from __future__ import annotations

import os
import struct

from cowtrace.host import procmaps
from cowtrace.host.memory import USER_ADDRESS_END

Mapping = procmaps.MapLine
read_maps = procmaps.read


def read(pid: int, addr: int, size: int) -> bytes | None:
    """`size` bytes at `addr` in `pid`, or None if the process or the page is gone (or the
    address, read from another process' memory, is not a user address at all)."""
    if not 0 < addr < USER_ADDRESS_END or size <= 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, addr)  # callers drain the LRU batches (remote_reads.py)
    except (OSError, OverflowError):  # OverflowError: a garbage pointer >= 2**63 (no user page)
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


def read_runs(pid: int, runs: list[tuple[int, int]]) -> list[bytes | None]:
    """Several (addr, size) runs of `pid`'s memory through one open of /proc/PID/mem, one
    pread each (a run of pages in one read); None for a run that could not be read whole."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return [None] * len(runs)
    out: list[bytes | None] = []
    try:
        for addr, size in runs:
            if not 0 < addr < USER_ADDRESS_END or size <= 0:
                out.append(None)
                continue
            try:
                data = os.pread(fd, size, addr)  # callers drain the LRU batches
            except (OSError, OverflowError):
                data = b""
            out.append(data if len(data) == size else None)
    finally:
        os.close(fd)
    return out


class Reader:
    """Reads from the first of several processes that still has the memory (a forked family
    shares its pre-fork objects at the same addresses, so a parent can stand in for a child
    that already exited)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def read(self, addr: int, size: int) -> bytes | None:
        for pid in self.pids:
            data = read(pid, addr, size)
            if data is not None:
                return data
        return None

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
