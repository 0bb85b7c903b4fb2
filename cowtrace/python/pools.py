"""pymalloc's pools, read from a copy of their bytes: which blocks on a page hold live objects.

CPython's small-object allocator (Objects/obmalloc.c) carves 1 MiB arenas (64-bit builds) into
16 KiB pools, each aligned to its size, so the pool of any address is the address rounded down
to POOL_SIZE.  A pool starts with a 48-byte header (`struct pool_header`): the allocated
block count, the head of its free list, the size class index (block size = (szidx + 1) * 16),
and `nextoffset`, the first block never handed out yet.  Blocks follow the header back to back:
block k is at offset 48 + k * size.  A block is live when it was carved (offset below
`nextoffset`) and is not on the free list, which is threaded through the free blocks' first
word.  So one read of the pool answers which blocks of each of its pages hold an object.

The numbers differ between versions only in what objects_table.json says (3.11-3.13 share
them; a later version adds an entry).  Everything here works on bytes already read: no I/O,
so the arithmetic is tested on synthetic pools.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources

import numpy as np

from cowtrace.host.memory import PAGE_SIZE


@dataclass(frozen=True)
class ObjectLayout:
    """pymalloc's and the object header's layout in one CPython minor version (bytes)."""

    version: str
    pool_size: int  # POOL_SIZE: 16 KiB with the radix tree (64-bit 3.10+)
    arena_size: int
    alignment: int  # ALIGNMENT: size classes are spaced this far apart
    small_request_threshold: int  # larger requests go to malloc, not a pool
    pool_header_size: int  # POOL_OVERHEAD: the first block's offset in its pool
    pool_count: int  # pool_header.ref.count (uint)
    pool_freeblock: int
    pool_arenaindex: int
    pool_szidx: int
    pool_nextoffset: int
    pool_maxnextoffset: int
    gc_head_size: int  # PyGC_Head, before an object whose type has Py_TPFLAGS_HAVE_GC
    preheader_flags: int  # tp_flags bits giving an object a pre-header before its GC head
    preheader_size: int  # ...of this many bytes (managed dict/values, weakref list)
    type_name: int  # PyTypeObject.tp_name
    type_basicsize: int
    type_itemsize: int
    type_flags: int
    type_dict: int
    heaptype_qualname: int  # PyHeapTypeObject.ht_qualname
    dict_keys: int  # PyDictObject.ma_keys
    keys_log2_index_bytes: int  # PyDictKeysObject fields
    keys_kind: int
    keys_nentries: int
    keys_indices: int

    @property
    def size_classes(self) -> int:
        return self.small_request_threshold // self.alignment

    @property
    def pages_per_pool(self) -> int:
        return self.pool_size // PAGE_SIZE

    def block_size(self, szidx: int) -> int:
        return (szidx + 1) * self.alignment

    def pool_of(self, addr: int) -> int:
        return addr & ~(self.pool_size - 1)

    def object_offsets(self) -> tuple[int, ...]:
        """Where an object may start in its block: no header, after a GC head, after a GC
        head and a pre-header (instances of Python classes with a managed __dict__)."""
        return (0, self.gc_head_size, self.gc_head_size + self.preheader_size)


_FIELDS = [f.name for f in fields(ObjectLayout) if f.name != "version"]


@cache
def _table() -> dict[str, dict[str, int]]:
    text = (resources.files("cowtrace.python") / "objects_table.json").read_text()
    return json.loads(text)


def object_layout(version: str) -> ObjectLayout | None:
    """The layout of a minor version ("3.11"), or None when cowtrace has none for it."""
    entry = _table().get(version)
    if entry is None:
        return None
    return ObjectLayout(version=version, **{name: entry[name] for name in _FIELDS})


@dataclass(frozen=True)
class PoolHeader:
    count: int  # allocated blocks
    freeblock: int  # address of the first free block, 0: none
    szidx: int
    nextoffset: int
    block_size: int

    def carved(self, layout: ObjectLayout) -> int:
        """Blocks handed out at least once (live or on the free list)."""
        return (self.nextoffset - layout.pool_header_size) // self.block_size


def pool_header(data: bytes, layout: ObjectLayout) -> PoolHeader | None:
    """The header at the start of `data`, or None when those bytes are not a pool header.

    Every field is checked against what obmalloc.c maintains (maxnextoffset = POOL_SIZE -
    size, nextoffset on the block grid, count no more than the carved blocks): bytes of
    anything else pass all of these by chance about never."""
    if len(data) < layout.pool_header_size:
        return None
    count = struct.unpack_from("<I", data, layout.pool_count)[0]
    freeblock = struct.unpack_from("<Q", data, layout.pool_freeblock)[0]
    szidx, nextoffset, maxnext = struct.unpack_from("<III", data, layout.pool_szidx)
    if szidx >= layout.size_classes:
        return None
    size = layout.block_size(szidx)
    header = layout.pool_header_size
    if maxnext != layout.pool_size - size:
        return None
    if not header + size <= nextoffset <= layout.pool_size or (nextoffset - header) % size:
        return None
    if count > (nextoffset - header) // size:
        return None
    return PoolHeader(count, freeblock, szidx, nextoffset, size)


def live_offsets(
    data: bytes,
    base: int,
    header: PoolHeader,
    layout: ObjectLayout,
    pages: list[int] | None = None,
) -> np.ndarray | None:
    """Offsets (from the pool's start) of its live blocks, ascending; only those overlapping
    `pages` (indexes of pages in the pool) when given.  None when the free list is
    inconsistent with the header (the pool changed while it was read, or is no pool)."""
    size = header.block_size
    first = layout.pool_header_size
    carved = header.carved(layout)
    free = _free_indexes(data, base, header, layout)
    if free is None:
        return None
    if pages is None:
        wanted = np.ones(carved, bool)
    else:
        wanted = np.zeros(carved, bool)
        for page in pages:  # blocks k with [first + k*size, +size) meeting the page
            lo = max(0, (page * PAGE_SIZE - first) // size)
            hi = min(carved, ((page + 1) * PAGE_SIZE - first + size - 1) // size)
            wanted[lo:hi] = True
    if free:
        wanted[free] = False
    return (first + np.flatnonzero(wanted) * size).astype(np.int64)


def _free_indexes(
    data: bytes, base: int, header: PoolHeader, layout: ObjectLayout
) -> list[int] | None:
    """Block indexes on the free list (threaded through each free block's first word)."""
    size = header.block_size
    first = layout.pool_header_size
    carved = header.carved(layout)
    free_count = carved - header.count
    words = memoryview(data).cast("Q")
    free: list[int] = []
    seen: set[int] = set()
    block = header.freeblock
    while block:
        offset = block - base
        if len(free) == free_count or not first <= offset < first + carved * size:
            return None
        index, rest = divmod(offset - first, size)
        if rest or index in seen:
            return None
        seen.add(index)
        free.append(index)
        block = words[offset >> 3]
    return free if len(free) == free_count else None
