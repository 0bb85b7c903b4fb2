"""Pool layout arithmetic, type recognition and page apportioning on synthetic pools."""

from __future__ import annotations

import numpy as np
import pytest

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.python import copied_types
from cowtrace.python.copied_types import CopiedTypes
from cowtrace.python.detect import PythonImage
from cowtrace.python.objects import Blocks, TypeInfo, apportion, classify
from cowtrace.python.offsets import table_offsets
from cowtrace.python.pools import live_offsets, object_layout, pool_header
from cowtrace.python.writers import CATEGORIES
from tests.unit.pool_samples import LAYOUT, POOL, TYPES, pool, table


def test_layouts_of_shipped_versions() -> None:
    for version in ("3.11", "3.12", "3.13"):
        layout = object_layout(version)
        assert layout is not None
        assert (layout.pool_size, layout.pool_header_size, layout.size_classes) == (16384, 48, 32)
        assert layout.pages_per_pool == 4
    assert object_layout("3.11").object_offsets() == (0, 16, 32)  # type: ignore[union-attr]
    assert object_layout("3.10") is None


def test_pool_header_fields() -> None:
    data = pool(2, ["app.A"] * 10, free=[3, 7])
    header = pool_header(data, LAYOUT)
    assert header is not None
    assert (header.count, header.szidx, header.block_size) == (8, 2, 48)
    assert header.nextoffset == 48 + 10 * 48
    assert header.carved(LAYOUT) == 10
    assert header.freeblock == POOL + 48 + 3 * 48


def test_full_pool_block_count() -> None:
    """48-byte blocks: (16384 - 48) // 48 = 340 blocks, the last one ending at 16368."""
    data = pool(2, ["app.A"] * 340)
    header = pool_header(data, LAYOUT)
    assert header is not None and header.carved(LAYOUT) == 340
    live = live_offsets(data, POOL, header, LAYOUT)
    assert live is not None and len(live) == 340 and live[-1] == 48 + 339 * 48


@pytest.mark.parametrize(
    "data",
    [bytes(16384), bytes(range(256)) * 64, b"\xff" * 16384],
    ids=["zeros", "ramp", "ones"],
)
def test_pool_header_rejects_other_bytes(data: bytes) -> None:
    assert pool_header(data, LAYOUT) is None


def test_live_offsets_skip_free_and_virgin_blocks() -> None:
    data = pool(4, ["float"] * 6, free=[0, 5])  # 80-byte blocks
    header = pool_header(data, LAYOUT)
    assert header is not None
    live = live_offsets(data, POOL, header, LAYOUT)
    assert live is not None
    assert live.tolist() == [48 + k * 80 for k in (1, 2, 3, 4)]


def test_live_offsets_inconsistent_free_list() -> None:
    data = bytearray(pool(4, ["float"] * 6, free=[2]))
    data[8:16] = (POOL + 48 + 7).to_bytes(8, "little")  # off the block grid
    header = pool_header(bytes(data), LAYOUT)
    assert header is not None
    assert live_offsets(bytes(data), POOL, header, LAYOUT) is None


def _blocks(data: bytes) -> tuple[np.ndarray, Blocks]:
    header = pool_header(data, LAYOUT)
    assert header is not None
    live = live_offsets(data, POOL, header, LAYOUT)
    assert live is not None
    words = np.frombuffer(data, "<u8").reshape(1, -1)
    return words, Blocks(np.zeros(len(live), np.int64), live, np.full(len(live), header.block_size))


def test_classify_by_header_offset() -> None:
    t = table()
    # A (managed dict + GC: object at 32), tuple (GC: 16), float (0), a raw buffer, free A
    data = pool(4, ["app.A", "tuple", "float", None, "app.A"], free=[4])
    words, blocks = _blocks(data)
    ids = classify(words, blocks, t, LAYOUT, lambda addr: None)
    names = [t.names.names[i] if i >= 0 else None for i in ids.tolist()]
    assert names == ["app.A", "tuple", "float", None]


def test_classify_rejects_type_at_wrong_offset() -> None:
    """A word equal to A's type address where a non-GC object's type would be is not an A."""
    t = table()
    data = bytearray(pool(4, [None]))
    data[48:64] = (1).to_bytes(8, "little") + TYPES["app.A"][0].to_bytes(8, "little")
    words, blocks = _blocks(bytes(data))
    assert classify(words, blocks, t, LAYOUT, lambda addr: None).tolist() == [-1]


def test_classify_reads_unknown_types_once() -> None:
    t = table()
    reads: list[int] = []
    data = pool(4, [None] * 3)
    words, blocks = _blocks(data)
    words = words.copy()
    for k in range(3):  # non-GC objects of an unknown type at 0x950000
        words[0, (48 + 80 * k) // 8 : (48 + 80 * k) // 8 + 2] = [1, 0x950000]

    def read(addr: int) -> None:
        reads.append(addr)

    assert classify(words, blocks, t, LAYOUT, read).tolist() == [-1, -1, -1]
    assert reads == [0x950000]
    classify(words, blocks, t, LAYOUT, read)
    assert reads == [0x950000]  # known not to be a type now


def test_classify_reads_the_recurring_type_before_unique_lookalikes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dicts (GC head, object at 16) whose words at 32/40 look like an object at a wrong
    offset: `ma_used` (5) as a refcount and a version tag, unique per dict and below the type's
    address, as a type pointer.  With few reads a batch, the type that recurs in every block
    is read first (it used to come last, after the lookalikes, in ascending order)."""
    from cowtrace.python import objects

    monkeypatch.setattr(objects, "NEW_TYPES_PER_BATCH", 4)
    t = table()
    dict_type = 0x9497E0
    words, blocks = _blocks(pool(3, [None] * 40))  # 64-byte blocks, unknown contents
    words = words.copy()
    for k in range(40):
        w = (48 + 64 * k) // 8
        words[0, w : w + 6] = [POOL + 64 * k, POOL + 64 * k, 1, dict_type, 5, 1000 + k]
    reads: list[int] = []

    def read(addr: int) -> TypeInfo | None:
        reads.append(addr)
        return TypeInfo("dict", 16, 48) if addr == dict_type else None

    names = [t.names.names[i] for i in classify(words, blocks, t, LAYOUT, read).tolist()]
    assert names == ["dict"] * 40
    assert reads[0] == dict_type and len(reads) <= 4


def test_apportion_full_pool_of_48_byte_blocks() -> None:
    """340 blocks from offset 48 to 16368: page 0 holds 4048 bytes of them (85 starting on
    it), pages 1 and 2 are covered whole (85 starting on page 1, 85 on page 2), page 3 holds
    4080 bytes (85 starting)."""
    t = table()
    words, blocks = _blocks(pool(2, ["app.A"] * 340))
    ids = classify(words, blocks, t, LAYOUT, lambda addr: None)
    copied = np.array([[1, 1, 1, 1]])
    shares = apportion(blocks, ids, copied, 4)
    assert shares.page.tolist() == [0, 1, 2, 3]
    assert shares.nbytes.tolist() == [4048, 4096, 4096, 4080]
    assert shares.objects.tolist() == [85, 85, 85, 85]
    assert shares.objects.sum() == 340
    assert shares.nbytes.sum() == 340 * 48


def test_apportion_straddling_block_and_uncopied_pages() -> None:
    """Only page 1 copied: the block crossing 4096 counts its bytes above 4096 there, but the
    object counts on page 0, where its block starts."""
    t = table()
    words, blocks = _blocks(pool(2, ["app.A"] * 340))
    ids = classify(words, blocks, t, LAYOUT, lambda addr: None)
    shares = apportion(blocks, ids, np.array([[0, 1, 0, 0]]), 4)
    assert shares.nbytes.tolist() == [4096]
    assert shares.objects.tolist() == [85]  # blocks 85..169 start on page 1
    # block 84 spans 4080..4128: 32 of its bytes are on page 1
    crossing = 48 + 84 * 48
    assert crossing < PAGE_SIZE < crossing + 48


def test_apportion_a_copied_page_where_no_object_starts() -> None:
    """512-byte blocks; those starting on page 1 are free, so page 1's only object bytes are
    the 48 of block 7 (3632..4144), whose start and object count are on page 0, not copied.
    (Over the types budget only sampled pages are copied pages here; this once crashed the
    agent: the first sum was empty, of integers, and the second added floats to it.)"""
    t = table()
    words, blocks = _blocks(pool(31, ["app.A"] * 31, free=list(range(8, 16))))
    ids = classify(words, blocks, t, LAYOUT, lambda addr: None)
    shares = apportion(blocks, ids, np.array([[0, 1, 0, 0]]), 4)
    assert shares.page.tolist() == [1]
    assert shares.nbytes.tolist() == [48]
    assert shares.objects.tolist() == [0]


def test_apportion_mixed_page_and_free_blocks() -> None:
    t = table()
    objects = ["app.A", "app.B"] * 40 + ["float"] * 4  # 84 blocks of 48 bytes: page 0
    words, blocks = _blocks(pool(2, objects, free=[0, 1]))
    ids = classify(words, blocks, t, LAYOUT, lambda addr: None)
    shares = apportion(blocks, ids, np.array([[1, 0, 0, 0]]), 4)
    got = {t.names.names[i]: (b, o) for i, b, o in zip(shares.type_id.tolist(),
           shares.nbytes.tolist(), shares.objects.tolist(), strict=True)}  # fmt: skip
    assert got == {"app.A": (39 * 48, 39), "app.B": (39 * 48, 39), "float": (4 * 48, 4)}


def test_copied_types_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pools read from a fake process: one of A (3 pages copied), one of B (never
    copied), and a page no process can be read at."""
    memory = {
        POOL: pool(2, ["app.A"] * 340, base=POOL),
        POOL + 16384: pool(2, ["app.B"] * 340, base=POOL + 16384),
    }

    def read_runs(pid: int, runs: list[tuple[int, int]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for addr, size in runs:
            chunks = [memory.get(addr + o) for o in range(0, size, 16384)]
            out.append(None if None in chunks else b"".join(chunks))  # type: ignore[arg-type]
        return out

    monkeypatch.setattr(copied_types.remote_reads, "read_runs", read_runs)
    types = CopiedTypes()
    types.tables[10] = table()
    types.tables[10].names = types.names
    image = PythonImage(pid=10, version="3.11", offsets=table_offsets("3.11"), runtime=0, path="")
    addrs = np.array([POOL, POOL + 4096, POOL + 8192, 0x5000_0000_0000], np.uint64)
    cats = np.array([CATEGORIES.index(c) for c in ("refcount", "refcount", "gc", "gc")])
    types.add_copies(image, 10, [10], addrs, cats)
    (a,) = types.stats()
    assert (a.type, a.objects, a.copied_bytes, a.pages) == ("app.A", 255, 4048 + 4096 * 2, 3)
    assert a.by_category == {"refcount": 4048 + 4096, "gc": 4096}
    assert types.family.page_stats() == {
        "objects": 3, "no_object": 0, "not_resolved": 0, "unreadable": 1,
    }  # fmt: skip
    assert types.process_stats(10) == types.stats()
    types.retire(10)
    types.end_drain()
    assert 10 in types.tables  # kept through the drain that may hold its last copies
    types.end_drain()
    assert 10 not in types.tables


def test_a_page_whose_pool_is_mapped_in_part_is_no_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The binary's .bss (or a library's .data beside a guard region) does not fill the 16 KiB
    around a copied page: the pool-sized read fails, the page reads.  pymalloc never maps a
    pool in part, so that page is outside every pool (not resolved), not unreadable."""
    page = 0x942000  # mapped: 0x941000-0x943000 only

    def read_runs(pid: int, runs: list[tuple[int, int]]) -> list[bytes | None]:
        return [
            bytes(size) if addr >= 0x941000 and addr + size <= 0x943000 else None
            for addr, size in runs
        ]

    monkeypatch.setattr(copied_types.remote_reads, "read_runs", read_runs)
    types = CopiedTypes()
    image = PythonImage(pid=10, version="3.11", offsets=table_offsets("3.11"), runtime=0, path="")
    cats = np.array([CATEGORIES.index("refcount")] * 2)
    types.add_copies(image, 10, [10], np.array([page, 0x5000_0000_0000], np.uint64), cats)
    assert types.family.page_stats() == {
        "objects": 0, "no_object": 0, "not_resolved": 1, "unreadable": 1,
    }  # fmt: skip


def test_live_pane_and_summary_lines() -> None:
    from rich.console import Console

    from cowtrace.model import Counts, Snapshot
    from cowtrace.render.types_pane import python_types_lines, python_types_pane
    from cowtrace.results import AttributionView, PythonTypeStat

    stat = PythonTypeStat("app.A", 340, 16320, 4, {"refcount": 12240, "gc": 4080})
    view = AttributionView(python_types=(stat,), python_pages={"objects": 4, "no_object": 1})
    snapshot = Snapshot(
        root_pid=1, started=0.0, now=1.0, members=[], totals=Counts(), attribution=view
    )
    console = Console(record=True, width=120)
    console.print(python_types_pane(snapshot))
    text = console.export_text()
    assert "copied objects by type" in text and "app.A" in text and "refcount 75% gc 25%" in text
    assert "pages with no Python object: 1" in text
    assert python_types_lines(snapshot)[1].split() == ["15.9", "KiB", "340", "app.A",
                                                      "[refcount", "75%", "gc", "25%]"]  # fmt: skip


def test_live_offsets_of_copied_pages_only() -> None:
    """48-byte blocks: page 1 ([4096, 8192)) meets blocks 84 (4080-4128) to 169 (8160-8208)."""
    data = pool(2, ["app.A"] * 340, free=[100])
    header = pool_header(data, LAYOUT)
    assert header is not None
    live = live_offsets(data, POOL, header, LAYOUT, [1])
    assert live is not None
    assert live.tolist() == [48 + k * 48 for k in range(84, 170) if k != 100]
    both = live_offsets(data, POOL, header, LAYOUT, [3, 0])
    assert both is not None and len(both) == 85 + 85  # page 0: blocks 0-84, page 3: 255-339


def test_read_runs_reads_each_run_with_one_open() -> None:
    import ctypes
    import os

    from cowtrace.host import remote_reads

    buffer = ctypes.create_string_buffer(b"abcdefgh" * 1024, 8192)
    addr = ctypes.addressof(buffer)
    got = remote_reads.read_runs(os.getpid(), [(addr, 8192), (addr + 8, 8), (0x10, 8), (addr, 0)])
    assert got == [buffer.raw, b"abcdefgh", None, None]
    assert remote_reads.read_runs(-1, [(addr, 8)]) == [None]


def test_large_objects_through_allocator_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside any pool: a 6000-byte block holding a tuple (GC head first) from 0x1010 and a
    block of raw data after it.  Page 0x1000 gets the tuple's 4080 bytes on it (one object,
    its block starts there); page 0x2000 its last 1920 bytes (the raw block's: no object, no
    bytes); page 0x3000 holds only raw data (no object); page 0x4000 has no block at all."""
    import struct

    region = bytearray(0x8000)  # addresses 0 .. 0x8000, no pool header anywhere
    tuple_addr, _offset, _basic = TYPES["tuple"]
    struct.pack_into("<QQqQ", region, 0x1010, 0, 0, 1, tuple_addr)  # GC head, refcnt, type

    def read_runs(pid: int, runs: list[tuple[int, int]]) -> list[bytes | None]:
        return [bytes(region[a : a + n]) if a + n <= len(region) else None for a, n in runs]

    def read(pid: int, addr: int, size: int) -> bytes | None:
        return bytes(region[addr : addr + size]) if addr + size <= len(region) else None

    class Memory:  # /proc/PID/mem kept open for a batch (remote_reads.Reader, keep_open)
        def __init__(self, pid: int) -> None:
            pass

        def read(self, addr: int, size: int) -> bytes:
            return read(10, addr, size) or b""

        def close(self) -> None:
            pass

    monkeypatch.setattr(copied_types.remote_reads, "read_runs", read_runs)
    monkeypatch.setattr(copied_types.remote_reads, "read", read)
    monkeypatch.setattr(copied_types.remote_reads, "MemoryFile", Memory)
    types = CopiedTypes()
    types.tables[10] = table()
    types.tables[10].names = types.names
    image = PythonImage(pid=10, version="3.11", offsets=table_offsets("3.11"), runtime=0, path="")
    addrs = np.array([0x1000, 0x2000, 0x4000, 0x3000], np.uint64)
    cats = np.full(4, CATEGORIES.index("gc"))
    blocks = (  # (copy index, block address, size), one row per overlap
        np.array([0, 1, 1, 3]),
        np.array([0x1010, 0x1010, 0x2780, 0x2780], np.uint64),
        np.array([6000, 6000, 4096, 4096]),
    )
    types.add_copies(image, 10, [10], addrs, cats, blocks)
    (row,) = types.stats()
    assert (row.type, row.objects, row.pages) == ("tuple", 1, 2)
    assert row.copied_bytes == (0x2000 - 0x1010) + (0x1010 + 6000 - 0x2000)
    assert row.by_category == {"gc": 6000}
    assert types.family.page_stats() == {
        "objects": 2, "no_object": 1, "not_resolved": 1, "unreadable": 0,
    }  # fmt: skip
