"""Memory maps followed through map records: exact intervals after each change."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from cowtrace.attribution.maps import (
    UNKNOWN_REGION,
    ProcessMap,
    RegionRegistry,
    classify,
    parse_maps,
    read_proc_maps,
)
from cowtrace.kernel.records import MAP_OP_BRK, MAP_OP_MPROTECT, MAP_OP_MREMAP, MAP_OP_MUNMAP
from tests.unit.attribution_records import PROT_RX, map_events, mmap

P = 4096
BASE = 0x7F0000000000

MAPS_TEXT = """\
55d000000000-55d000001000 r--p 00000000 fe:00 1 /usr/bin/prog
55d000001000-55d000002000 r-xp 00001000 fe:00 1 /usr/bin/prog
55d000003000-55d000005000 rw-p 00003000 fe:00 1 /usr/bin/prog
55d000100000-55d000200000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000010000 rw-p 00000000 00:00 0
7f0000010000-7f0000011000 rw-p 00000000 00:00 0                          [anon:cache]
7f0000020000-7f0000030000 rw-s 00000000 00:01 7                          /dev/shm/seg
7f0000030000-7f0000031000 rw-s 00000000 00:01 8                          /SYSV00000000 (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
7ffc00030000-7ffc00032000 r-xp 00000000 00:00 0                          [vdso]
"""


def spans(pmap: ProcessMap) -> list[tuple[int, int, str, str, int]]:
    return [(i.start, i.end, i.kind, i.name, i.offset) for i in pmap.intervals]


def apply(pmap: ProcessMap, *rows: dict) -> None:
    for record in map_events(rows):
        pmap.apply(record)


def test_kinds_from_proc_maps() -> None:
    kinds = [(i.kind, i.name) for i in parse_maps(MAPS_TEXT)]
    assert kinds == [
        ("file", "/usr/bin/prog"),
        ("file", "/usr/bin/prog"),
        ("file", "/usr/bin/prog"),
        ("heap", "[heap]"),
        ("anon", ""),
        ("anon_named", "[anon:cache]"),
        ("shm", "/dev/shm/seg"),
        ("shm", "/SYSV00000000 (deleted)"),
        ("stack", "[stack]"),
        ("other", "[vdso]"),
    ]
    assert classify("/usr/lib/x.so", shared=True) == ("shm", "/usr/lib/x.so")
    assert classify("", shared=True) == ("shm", "[shared anon]")


def test_resolve_batch_with_offsets() -> None:
    registry = RegionRegistry()
    pmap = ProcessMap(registry, parse_maps(MAPS_TEXT))
    addrs = np.array([0x55D000004000, 0x55D000150000, BASE + 5 * P, 0x55D000002000, 0], np.uint64)
    region, offset = pmap.resolve(addrs)
    names = [(registry.regions[r].kind, registry.regions[r].name) for r in region.tolist()]
    assert names == [
        ("file", "/usr/bin/prog"),
        ("heap", "[heap]"),
        ("anon", ""),
        ("other", "[unknown]"),  # the hole between the binary's mappings
        ("other", "[unknown]"),
    ]
    assert offset.tolist() == [0x4000, -1, -1, -1, -1]
    assert region[3] == UNKNOWN_REGION


def test_munmap_splits_and_mmap_replaces() -> None:
    pmap = ProcessMap(RegionRegistry())
    apply(pmap, mmap(1, 1, BASE, 16 * P))
    apply(pmap, dict(ts=2, pid=1, op=MAP_OP_MUNMAP, start=BASE + 4 * P, length=2 * P))
    assert spans(pmap) == [
        (BASE, BASE + 4 * P, "anon", "", -1),
        (BASE + 6 * P, BASE + 16 * P, "anon", "", -1),
    ]
    # MAP_FIXED over the middle of the second part, shared: three pieces
    apply(pmap, mmap(3, 1, BASE + 8 * P, 2 * P, flags=0x11))
    assert spans(pmap) == [
        (BASE, BASE + 4 * P, "anon", "", -1),
        (BASE + 6 * P, BASE + 8 * P, "anon", "", -1),
        (BASE + 8 * P, BASE + 10 * P, "shm", "[shared anon]", -1),
        (BASE + 10 * P, BASE + 16 * P, "anon", "", -1),
    ]
    # an unaligned length covers whole pages; a failed mmap (-ENOMEM) changes nothing
    apply(pmap, dict(ts=4, pid=1, op=MAP_OP_MUNMAP, start=BASE, length=P + 1))
    apply(pmap, mmap(5, 1, (1 << 64) - 12, P))
    assert spans(pmap)[0] == (BASE + 2 * P, BASE + 4 * P, "anon", "", -1)


def test_file_mmap_offsets_follow_mremap() -> None:
    pmap = ProcessMap(RegionRegistry())
    rows = [mmap(1, 1, BASE, 4 * P, fd=3, pgoff=0x10000, flags=0x02)]
    for record in map_events(rows):
        pmap.apply(record, "/data/file")
    # move the last two pages elsewhere and grow them to four
    target = BASE + 100 * P
    apply(
        pmap,
        dict(
            ts=2,
            pid=1,
            op=MAP_OP_MREMAP,
            start=BASE + 2 * P,
            length=2 * P,
            new_start=target,
            new_length=4 * P,
        ),
    )
    assert spans(pmap) == [
        (BASE, BASE + 2 * P, "file", "/data/file", 0x10000),
        (target, target + 4 * P, "file", "/data/file", 0x12000),
    ]
    _, offset = pmap.resolve(np.array([target + 3 * P], np.uint64))
    assert offset.tolist() == [0x15000]
    # shrink in place: the tail goes
    apply(
        pmap,
        dict(ts=3, pid=1, op=MAP_OP_MREMAP, start=target, length=4 * P, new_start=target,
             new_length=P),
    )  # fmt: skip
    assert spans(pmap)[1] == (target, target + P, "file", "/data/file", 0x12000)


def test_brk_grows_and_shrinks_heap() -> None:
    pmap = ProcessMap(RegionRegistry())
    heap = 0x55D000100000
    apply(pmap, dict(ts=1, pid=1, op=MAP_OP_BRK, start=heap, new_start=heap + 0x21000))
    apply(pmap, dict(ts=2, pid=1, op=MAP_OP_BRK, start=heap + 0x21000, new_start=heap + 0x42010))
    assert [(s, e, k) for s, e, k, _, _ in spans(pmap)] == [
        (heap, heap + 0x21000, "heap"),
        (heap + 0x21000, heap + 0x43000, "heap"),
    ]
    apply(pmap, dict(ts=3, pid=1, op=MAP_OP_BRK, start=heap + 0x42010, new_start=heap + 0x10000))
    assert [(s, e) for s, e, *_ in spans(pmap)] == [(heap, heap + 0x10000)]


def test_first_brk_seen_keeps_the_program_below_the_heap() -> None:
    """The tracer's first brk of a process carries no old break (start=0): the heap grows from
    the [heap] read at attach, and the program's mappings below it stay (nginx's text was
    wiped by a heap mapped from 0)."""
    pmap = ProcessMap(RegionRegistry(), parse_maps(MAPS_TEXT))
    before = spans(pmap)
    heap_end = 0x55D000200000
    apply(pmap, dict(ts=1, pid=1, op=MAP_OP_BRK, start=0, new_start=heap_end + 0x1010))
    after = spans(pmap)
    assert after[: len(before)][:3] == before[:3]
    assert pmap.executable(0x55D000001800)
    heap = [(s, e) for s, e, k, _, _ in after if k == "heap"]
    assert heap == [(0x55D000100000, heap_end), (heap_end, heap_end + 0x2000)]
    # A process with no heap yet (the first brk after an exec): nothing is mapped.
    empty = ProcessMap(RegionRegistry(), [])
    apply(empty, dict(ts=1, pid=1, op=MAP_OP_BRK, start=0, new_start=0x55D000100000))
    assert spans(empty) == []


def test_mprotect_tracks_executable_ranges() -> None:
    pmap = ProcessMap(RegionRegistry())
    apply(pmap, mmap(1, 1, BASE, 4 * P, prot=PROT_RX))
    assert pmap.executable(BASE + P) and not pmap.executable(BASE + 4 * P)
    apply(pmap, dict(ts=2, pid=1, op=MAP_OP_MPROTECT, start=BASE + P, length=P, prot=1))
    assert pmap.executable(BASE) and not pmap.executable(BASE + P)
    assert pmap.executable(BASE + 2 * P)


def test_libc_sections_from_its_elf_headers() -> None:
    """The live process' libc: its rw mapping holds .data, the anonymous tail after it .bss."""
    registry = RegionRegistry()
    pmap = ProcessMap(registry, read_proc_maps(0) or read_proc_maps(__import__("os").getpid()))
    sections = {
        (registry.regions[i.region].section)
        for i in pmap.intervals
        if "libc.so" in i.name and i.kind == "file"
    }
    assert {".data", ".bss"} <= sections
    # the .bss tail is reported as the file, with continued offsets
    bss = [i for i in pmap.intervals if registry.regions[i.region].section == ".bss"]
    assert all(i.offset > 0 for i in bss if "libc.so" in i.name)


def test_sections_split_whole_pages_only() -> None:
    from cowtrace.attribution.maps import _carve

    pieces = [(0x1000, 0x5000, None)]
    assert _carve(pieces, 0x1900, 0x1A00, ".data") == pieces  # a sliver: no page
    assert _carve(pieces, 0x1100, 0x3900, ".data") == [
        (0x1000, 0x4000, ".data"),
        (0x4000, 0x5000, None),
    ]


def test_the_map_of_an_exiting_process_is_unknown_not_empty() -> None:
    """A zombie's /proc/PID/maps reads empty.  Taken as a known empty map, it was copied to
    the children forked before, and every frame of their stacks was then "in no executable
    mapping": writer stacks came out empty."""

    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert read_proc_maps(child) is None
    finally:
        os.waitpid(child, 0)
    assert read_proc_maps(child) is None  # gone
    assert read_proc_maps(os.getpid())  # alive: its mappings
