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


@dataclass
class PoolHeaders:
    """The headers of many pools at once (one row each), parsed by :func:`pool_headers`.
    Fields are 0 in the rows that hold no pool header (`valid` False)."""

    valid: np.ndarray  # bool: the bytes are a pool header
    count: np.ndarray  # int64: allocated blocks
    freeblock: np.ndarray  # uint64: address of the first free block, 0: none
    szidx: np.ndarray  # int64
    nextoffset: np.ndarray  # int64
    block_size: np.ndarray  # int64
    carved: np.ndarray  # int64: blocks handed out at least once (live or on the free list)


def pool_headers(words: np.ndarray, layout: ObjectLayout) -> PoolHeaders:
    """The header of each row of `words` (little-endian words, each row the start of a pool:
    at least its header).  Every field is checked against what obmalloc.c maintains
    (maxnextoffset = POOL_SIZE - size, nextoffset on the block grid, count no more than the
    carved blocks): bytes of anything else pass all of these by chance about never."""
    half = words.view("<u4")  # the header's uint fields; freeblock is a whole word

    def uint(offset: int) -> np.ndarray:
        return half[:, offset // 4].astype(np.int64)

    count, szidx = uint(layout.pool_count), uint(layout.pool_szidx)
    nextoffset, maxnext = uint(layout.pool_nextoffset), uint(layout.pool_maxnextoffset)
    freeblock = words[:, layout.pool_freeblock // 8]
    header = layout.pool_header_size
    size = (np.minimum(szidx, layout.size_classes - 1) + 1) * layout.alignment
    carved = (nextoffset - header) // size
    valid = (
        (szidx < layout.size_classes)
        & (maxnext == layout.pool_size - size)
        & (header + size <= nextoffset)
        & (nextoffset <= layout.pool_size)
        & ((nextoffset - header) % size == 0)
        & (count <= carved)
    )

    def kept(values: np.ndarray) -> np.ndarray:
        return np.where(valid, values, 0).astype(values.dtype)

    return PoolHeaders(
        valid=valid,
        count=kept(count),
        freeblock=kept(freeblock),
        szidx=kept(szidx),
        nextoffset=kept(nextoffset),
        block_size=kept(size),
        carved=kept(carved),
    )


def pool_header(data: bytes, layout: ObjectLayout) -> PoolHeader | None:
    """The header at the start of `data` (:func:`pool_headers` of one pool), or None when
    those bytes are not a pool header."""
    if len(data) < layout.pool_header_size:
        return None
    words = np.frombuffer(data[: layout.pool_header_size], "<u8").reshape(1, -1)
    parsed = pool_headers(words, layout)
    if not parsed.valid[0]:
        return None
    return PoolHeader(
        int(parsed.count[0]),
        int(parsed.freeblock[0]),
        int(parsed.szidx[0]),
        int(parsed.nextoffset[0]),
        int(parsed.block_size[0]),
    )


def free_blocks(
    words: np.ndarray, bases: np.ndarray, headers: PoolHeaders, layout: ObjectLayout
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks on the free lists of the valid pools of `words` (one whole pool per row,
    at address `bases[row]`): (row, block index) of each, and per row whether its free list
    is inconsistent with its header (the pool changed while it was read, or is no pool).

    A free list is threaded through its free blocks' first words.  The lists of all the
    pools are walked together, one block of each per step: a list is consistent when it
    ends (a null word) after exactly carved - count blocks, each on the pool's block grid.
    A list that loops never ends, so it fails the count too."""
    first = np.int64(layout.pool_header_size)
    nrows, width = words.shape
    flat = words.reshape(-1)
    expected = np.where(headers.valid, headers.carved - headers.count, 0)
    torn = np.zeros(nrows, bool)
    found = np.zeros(nrows, np.int64)
    rows = np.flatnonzero(headers.valid & (headers.freeblock != 0))
    block = headers.freeblock[rows]
    free_rows: list[np.ndarray] = []
    free_index: list[np.ndarray] = []
    while len(rows):
        size, carved = headers.block_size[rows], headers.carved[rows]
        low = bases[rows] + np.uint64(first)
        inside = (block >= low) & (block < low + (carved * size).astype(np.uint64))
        offset = np.where(inside, block - low, 0).astype(np.int64)
        index, rest = np.divmod(offset, size)
        ok = inside & (rest == 0) & (found[rows] < expected[rows])
        torn[rows[~ok]] = True
        rows, index, offset = rows[ok], index[ok], offset[ok]
        free_rows.append(rows)
        free_index.append(index)
        found[rows] += 1
        block = flat[rows * width + ((first + offset) >> 3)]
        more = block != 0
        rows, block = rows[more], block[more]
    torn |= headers.valid & (found != expected)
    none = [np.zeros(0, np.int64)]
    return np.concatenate(free_rows or none), np.concatenate(free_index or none), torn


def live_blocks(
    words: np.ndarray,
    bases: np.ndarray,
    headers: PoolHeaders,
    layout: ObjectLayout,
    page_rows: np.ndarray,
    page_index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The live blocks of the pools of `words` (one whole pool per row, at `bases[row]`) that
    overlap the pages given as (row, index of the page in its pool) pairs (repeats allowed):
    (row, offset from the pool's start, ascending per row) of each, and the torn rows (free
    list inconsistent with the header: no blocks listed).  A block is live when it was
    carved and is not on the free list."""
    free_rows, free_index, torn = free_blocks(words, bases, headers, layout)
    usable = headers.valid & ~torn
    first, per_pool = layout.pool_header_size, layout.pages_per_pool
    # Each copied page's blocks: k with [first + k*size, +size) meeting the page, a range per
    # page in (row, page) order; the block two adjacent pages share goes to the first.
    pages = np.unique(page_rows * per_pool + page_index)
    rows, index = pages // per_pool, pages % per_pool
    rows, index = rows[usable[rows]], index[usable[rows]]
    size = headers.block_size[rows]
    lo = np.maximum(0, (index * PAGE_SIZE - first) // size)
    hi = np.minimum(headers.carved[rows], ((index + 1) * PAGE_SIZE - first + size - 1) // size)
    follows = np.zeros(len(rows), bool)
    follows[1:] = rows[1:] == rows[:-1]
    lo[follows] = np.maximum(lo[follows], hi[np.flatnonzero(follows) - 1])
    some = hi > lo
    rows, size, lo, hi = rows[some], size[some], lo[some], hi[some]
    counts = hi - lo
    out = np.cumsum(counts) - counts  # each range's first place in the list
    # The offsets, range after range, as one running sum: each range's block size, and at
    # its first place the jump from the previous range's last block to its own first.
    offset = np.repeat(size, counts)
    if len(counts):
        starts = first + lo * size
        ends = first + (hi - 1) * size
        offset[out] = starts - np.concatenate([[0], ends[:-1]])
    offset = np.cumsum(offset)
    # less the free blocks: each found in its row's range (keys ascending: row, then block)
    live = np.ones(len(offset), bool)
    listed = usable[free_rows]
    free_rows, free_index = free_rows[listed], free_index[listed]
    if len(rows) and len(free_rows):
        keys = rows * (1 << 32) + lo
        at = np.searchsorted(keys, free_rows * (1 << 32) + free_index, "right") - 1
        at = np.maximum(at, 0)
        inside = (rows[at] == free_rows) & (free_index < hi[at]) & (free_index >= lo[at])
        live[out[at[inside]] + free_index[inside] - lo[at[inside]]] = False
    return np.repeat(rows, counts)[live], offset[live], torn

def live_offsets(
    data: bytes,
    base: int,
    header: PoolHeader,
    layout: ObjectLayout,
    pages: list[int] | None = None,
) -> np.ndarray | None:
    """Offsets (from the pool's start) of its live blocks, ascending; only those overlapping
    `pages` (indexes of pages in the pool) when given.  None when the free list is
    inconsistent with the header (:func:`live_blocks` of one pool)."""
    words = np.zeros((1, layout.pool_size // 8), np.uint64)
    got = np.frombuffer(data[: layout.pool_size], "<u8")
    words[0, : len(got)] = got
    headers = PoolHeaders(
        valid=np.array([True]),
        count=np.array([header.count], np.int64),
        freeblock=np.array([header.freeblock], np.uint64),
        szidx=np.array([header.szidx], np.int64),
        nextoffset=np.array([header.nextoffset], np.int64),
        block_size=np.array([header.block_size], np.int64),
        carved=np.array([header.carved(layout)], np.int64),
    )
    index = np.arange(layout.pages_per_pool) if pages is None else np.array(pages, np.int64)
    _rows, offsets, torn = live_blocks(
        words, np.array([base], np.uint64), headers, layout, np.zeros(len(index), np.int64), index
    )
    return None if torn[0] else offsets.astype(np.int64)
