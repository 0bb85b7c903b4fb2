"""Synthetic pymalloc pools (CPython 3.11 layout) for the pool and apportioning tests and the
resolution benchmark: bytes built the way obmalloc.c lays them out, with fake type addresses
that a pre-filled TypeTable names, so nothing is read from any process."""

from __future__ import annotations

import struct

from cowtrace.python.objects import TypeInfo, TypeNames, TypeTable
from cowtrace.python.pools import ObjectLayout, object_layout

LAYOUT: ObjectLayout = object_layout("3.11")  # type: ignore[assignment]
POOL = 0x7F0000000000  # a pool address (16 KiB aligned)
# name -> (type address, object offset in its block, basic size)
TYPES = {
    "app.A": (0x7F1000000000, 32, 16),  # a Python class instance: managed dict + GC head
    "app.B": (0x7F1000001000, 32, 16),
    "float": (0x900000, 0, 24),  # no GC head
    "tuple": (0x900400, 16, 24),  # GC head
}


def table() -> TypeTable:
    t = TypeTable(TypeNames())
    for name, (addr, offset, basic) in TYPES.items():
        t.add(addr, TypeInfo(name, offset, basic))
    return t


def pool(szidx: int, objects: list[str | None], *, free: list[int] = (), base: int = POOL) -> bytes:
    """A pool of size class `szidx` whose first len(objects) blocks were carved: a type name
    (an object of that type), or None (a raw buffer of zeros); `free` lists block indexes on
    the free list (their old object bytes stay, as in a real pool)."""
    size = (szidx + 1) * LAYOUT.alignment
    data = bytearray(LAYOUT.pool_size)
    first = LAYOUT.pool_header_size
    for k, name in enumerate(objects):
        if name is None:
            continue
        addr, offset, _basic = TYPES[name]
        struct.pack_into("<qQ", data, first + k * size + offset, 1, addr)
        if offset:  # a GC head before it: gc_next / gc_prev pointers
            struct.pack_into("<QQ", data, first + k * size + offset - 16, base + 64, base + 128)
    next_free = 0
    for k in sorted(free, reverse=True):
        struct.pack_into("<Q", data, first + k * size, next_free)
        next_free = base + first + k * size
    carved = len(objects)
    struct.pack_into(
        "<IIQQQIIII", data, 0, carved - len(free), 0, next_free, 0, 0, 0, szidx,
        first + carved * size, LAYOUT.pool_size - size,
    )  # fmt: skip
    return bytes(data)
