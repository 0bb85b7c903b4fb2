"""The batch forms of the pool parsing and the type table's hashed lookup (issue 14,
performance) agree with the one-pool and dictionary answers."""

from __future__ import annotations

import struct

import numpy as np

from cowtrace.python.objects import TypeInfo, TypeNames, TypeTable
from cowtrace.python.pools import live_blocks, live_offsets, pool_header, pool_headers
from tests.unit.pool_samples import LAYOUT, POOL, pool


def _reference_live(data: bytes, base: int, pages: list[int]) -> list[int] | None:
    """The live blocks' offsets on `pages`, one block at a time (the oracle): None when the
    free list does not match the header."""
    header = pool_header(data, LAYOUT)
    assert header is not None
    size, first = header.block_size, LAYOUT.pool_header_size
    carved = header.carved(LAYOUT)
    free: list[int] = []
    block = header.freeblock
    while block:
        offset = block - base
        if len(free) == carved - header.count or not first <= offset < first + carved * size:
            return None
        index, rest = divmod(offset - first, size)
        if rest or index in free:
            return None
        free.append(index)
        block = struct.unpack_from("<Q", data, offset)[0]
    if len(free) != carved - header.count:
        return None
    wanted = set()
    for page in pages:
        lo = max(0, (page * 4096 - first) // size)
        wanted.update(range(lo, min(carved, ((page + 1) * 4096 - first + size - 1) // size)))
    return [first + k * size for k in sorted(wanted - set(free))]


def test_lookup_agrees_with_the_dictionary() -> None:
    rng = np.random.default_rng(3)
    table = TypeTable(TypeNames())
    known = rng.integers(0, 1 << 47, 3000).astype(np.uint64) & ~np.uint64(7)
    for k, addr in enumerate(known.tolist()):
        table.add(addr, TypeInfo(f"t{k}", 0, 16) if k % 3 else None)
    table.add(0, None)  # a null word read once: an entry like any other
    words = np.concatenate([known, rng.integers(0, 1 << 47, 5000).astype(np.uint64), [0, 8]])
    addrs = table.arrays()[0]
    place = {int(a): i for i, a in enumerate(addrs.tolist())}
    assert table.lookup(words).tolist() == [place.get(int(w), -1) for w in words.tolist()]
    assert table.lookup(np.zeros(0, np.uint64)).tolist() == []


def test_batch_of_pools_agrees_with_each_pool() -> None:
    """Pools of several size classes, one with a free list off the block grid, one with a
    looping free list, one that is no pool; pages copied here and there, one twice."""
    def at(row: int) -> int:
        return POOL + row * 16384

    samples = [
        pool(2, ["app.A"] * 340, free=[0, 84, 85, 339], base=at(0)),
        pool(0, ["float"] * 1000, free=list(range(0, 1000, 7)), base=at(1)),
        pool(4, ["float"] * 6, free=[2], base=at(2)),
        pool(31, ["tuple"] * 31, free=[30], base=at(3)),
        pool(1, ["tuple"] * 200, free=[3, 9, 50], base=at(4)),
        bytes(range(256)) * 64,
    ]
    bad = bytearray(samples[2])
    bad[8:16] = (at(2) + 48 + 7).to_bytes(8, "little")  # off the block grid
    samples[2] = bytes(bad)
    loop = bytearray(samples[4])  # block 50 points back to block 3
    struct.pack_into("<Q", loop, 48 + 50 * 32, at(4) + 48 + 3 * 32)
    samples[4] = bytes(loop)
    words = np.frombuffer(b"".join(samples), "<u8").reshape(len(samples), -1)
    bases = POOL + np.arange(len(samples), dtype=np.uint64) * np.uint64(16384)
    headers = pool_headers(words, LAYOUT)
    copied = {0: [1, 2, 1], 1: [0, 3], 2: [0], 3: [0, 1, 2, 3], 4: [2], 5: [0]}
    rows = np.array([r for r, pages in copied.items() for _ in pages], np.int64)
    index = np.array([p for pages in copied.values() for p in pages], np.int64)
    got_rows, got_offsets, torn = live_blocks(words, bases, headers, LAYOUT, rows, index)
    for row, data in enumerate(samples):
        header = pool_header(data, LAYOUT)
        assert headers.valid[row] == (header is not None)
        if header is None:
            continue
        base = int(bases[row])
        expected = _reference_live(data, base, copied[row])
        alone = live_offsets(data, base, header, LAYOUT, copied[row])
        assert (None if alone is None else alone.tolist()) == expected, row
        assert torn[row] == (expected is None), row
        assert got_offsets[got_rows == row].tolist() == (expected or []), row
    assert torn.tolist() == [False, False, True, False, True, False]
