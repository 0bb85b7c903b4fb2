"""Memory maps followed through /proc snapshots taken after each change record."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from cowtrace.attribution import maps as maps_module
from cowtrace.attribution.engine import AttributionEngine
from cowtrace.attribution.maps import (
    UNKNOWN_REGION,
    MapWatcher,
    ProcessMap,
    RegionRegistry,
    classify,
    parse_maps,
    read_proc_maps,
)
from cowtrace.kernel.abi import PE_EXEC, PE_FORK, PE_MAPS
from cowtrace.kernel.tracer import ProcRecord

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


def rec(kind: int, ts: int, pid: int, ppid: int = 0) -> ProcRecord:
    return ProcRecord(type=kind, ts_ns=ts, pid=pid, ppid=ppid, root=1, exit_code=-1,
                      exit_signal=0, comm="")  # fmt: skip


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


def maps_text(*lines: tuple[int, int, str, int, str]) -> str:
    """/proc/PID/maps lines from (start, end, perms, offset, path)."""
    return "".join(
        f"{lo:x}-{hi:x} {perms} {off:08x} 00:00 0 {path}\n" for lo, hi, perms, off, path in lines
    )


def names(registry: RegionRegistry, pmap: ProcessMap, addrs: list[int]) -> list[tuple]:
    region, offset = pmap.resolve(np.array(addrs, np.uint64))
    return [
        (registry.regions[r].kind, registry.regions[r].name, o)
        for r, o in zip(region.tolist(), offset.tolist(), strict=True)
    ]


def test_snapshot_replaces_the_map_and_falls_back_to_the_one_before() -> None:
    """munmap, MAP_FIXED over a part, mremap of a file mapping, brk, mprotect: all seen as the
    next /proc snapshot.  An address the snapshot no longer holds (unmapped between the change
    and the re-read) resolves against the map before it."""
    registry = RegionRegistry()
    heap = 0x55D000100000
    before = ProcessMap(registry, parse_maps(MAPS_TEXT))
    target = BASE + 100 * P
    after = before.replaced_by(
        parse_maps(
            maps_text(
                (0x55D000000000, 0x55D000001000, "r--p", 0, "/usr/bin/prog"),
                (0x55D000001000, 0x55D000002000, "r--p", 0x1000, "/usr/bin/prog"),  # mprotect
                (heap, heap + 0x143000, "rw-p", 0, "[heap]"),  # brk grew it
                (BASE, BASE + 4 * P, "rw-p", 0, ""),  # munmap cut the tail off
                (BASE + 8 * P, BASE + 10 * P, "rw-s", 0, "/dev/zero (deleted)"),  # MAP_FIXED
                (target, target + 4 * P, "rw-p", 0x12000, "/data/file"),  # moved by mremap
            )
        )
    )
    got = names(
        registry,
        after,
        [heap + 0x142000, BASE + 2 * P, BASE + 9 * P, target + 3 * P, BASE + 12 * P,
         0x7FFC00000000, 0x55D000004000, 0x7F0000040000],
    )  # fmt: skip
    assert got == [
        ("heap", "[heap]", -1),
        ("anon", "", -1),
        ("shm", "/dev/zero (deleted)", -1),
        ("file", "/data/file", 0x15000),
        ("anon", "", -1),  # unmapped since: the map before says anon
        ("stack", "[stack]", -1),  # gone from the snapshot: the map before
        ("file", "/usr/bin/prog", 0x4000),
        ("other", "[unknown]", -1),  # in neither
    ]
    # mprotect(PROT_READ) over the text: the snapshot holds the range, so it is not code any
    # more; a range only the map before holds keeps its answer (the vdso).
    assert not after.executable(0x55D000001800)
    assert after.executable(0x7FFC00031000)
    assert not after.executable(BASE + 2 * P)


def test_the_fallback_is_one_map_deep() -> None:
    registry = RegionRegistry()
    first = ProcessMap(registry, parse_maps(maps_text((BASE, BASE + P, "rw-p", 0, ""))))
    second = first.replaced_by(parse_maps(maps_text((BASE + P, BASE + 2 * P, "rw-p", 0, ""))))
    third = second.replaced_by(parse_maps(maps_text((BASE + 2 * P, BASE + 3 * P, "rw-p", 0, ""))))
    kinds = [k for k, _, _ in names(registry, third, [BASE, BASE + P, BASE + 2 * P])]
    assert kinds == ["other", "anon", "anon"]
    assert third.previous is not None and third.previous.previous is None
    # an unknown map (after exec, not read yet) is no fallback
    unknown = ProcessMap(registry)
    assert unknown.replaced_by([]).previous is None


def test_watcher_rereads_each_changed_map_once_and_rearms_first(monkeypatch) -> None:
    calls: list[tuple[str, int]] = []
    texts = {
        10: maps_text((BASE, BASE + P, "r-xp", 0, "/usr/lib/libc.so.6")),
        11: "",  # a zombie: no snapshot, its known map stays
    }

    def fake_read(pid: int):
        calls.append(("read", pid))
        return parse_maps(texts.get(pid, "")) or None

    monkeypatch.setattr(maps_module, "read_proc_maps", fake_read)
    watcher = MapWatcher(lambda pid: calls.append(("rearm", pid)))
    watcher.on_records(
        [rec(PE_MAPS, 50, 10), rec(PE_MAPS, 40, 11), rec(PE_MAPS, 60, 10)]  # 60: same batch
    )
    snapshots, mapped_code = watcher.read()
    assert calls == [("rearm", 11), ("read", 11), ("rearm", 10), ("read", 10)]
    assert [(s.ts_ns, s.pid, len(s.intervals)) for s in snapshots] == [(50, 10, 1)]
    assert mapped_code == []  # nothing known of pid 10's code before: not "new"
    assert watcher.read() == ([], [])
    # After an exec, what the loader maps is new code; a fork inherits what its parent maps.
    texts[12] = texts[10]
    texts[10] = texts[10] + maps_text(
        (BASE + P, BASE + 2 * P, "r-xp", 0, "/usr/lib/libjemalloc.so")
    )
    watcher.on_records([rec(PE_FORK, 70, 12, ppid=10), rec(PE_EXEC, 71, 13)])
    watcher.on_records([rec(PE_MAPS, 80, 12), rec(PE_MAPS, 81, 13), rec(PE_MAPS, 82, 10)])
    texts[13] = texts[10]
    snapshots, mapped_code = watcher.read()
    assert sorted(mapped_code) == [10, 13]  # dlopen in 10, the loader in 13; 12: the same libc
    assert [s.ts_ns for s in snapshots] == [80, 81, 82]


def test_a_change_marked_during_an_exec_is_the_new_images_map(monkeypatch) -> None:
    """exec sets up the new stack and binary under the mmap lock before its exec record: the
    snapshot read after it is applied with the exec, not before it (where the exec would
    reset it)."""
    monkeypatch.setattr(maps_module, "read_proc_maps", lambda pid: parse_maps(MAPS_TEXT))
    watcher = MapWatcher(lambda pid: None)
    watcher.on_records([rec(PE_MAPS, 10, 7), rec(PE_EXEC, 12, 7)])
    snapshots, _ = watcher.read()
    assert [(s.ts_ns, s.pid) for s in snapshots] == [(12, 7)]
    engine = AttributionEngine(read_proc=False)
    engine.on_exec(12, 7)
    engine.on_map_snapshots(snapshots)
    engine.flush()
    assert engine.maps[7].known and engine.maps[7].executable(0x55D000001800)


def test_watcher_without_attribution_reads_nothing(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(maps_module, "read_proc_maps", lambda pid: calls.append(pid))
    watcher = MapWatcher(calls.append, read=False)
    watcher.on_records([rec(PE_MAPS, 1, 10)])
    assert watcher.read() == ([], []) and calls == []


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
        deadline = time.monotonic() + 60
        while Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert read_proc_maps(child) is None
    finally:
        os.waitpid(child, 0)
    assert read_proc_maps(child) is None  # gone
    assert read_proc_maps(os.getpid())  # alive: its mappings
