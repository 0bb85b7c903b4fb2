"""Parsing of /proc/PID/smaps and smaps_rollup text (samples copied from a 6.18 kernel)."""

from __future__ import annotations

from cowtrace.host import smaps

SMAPS = """\
00400000-0041f000 r--p 00000000 fe:00 260811                             /usr/bin/python3.11
Size:                124 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                 124 kB
Pss:                  62 kB
Pss_Dirty:             0 kB
Shared_Clean:        124 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:          124 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd mr mw me
7f0000001000-7f0000101000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
Shared_Dirty:        512 kB
Private_Dirty:       512 kB
Anonymous:          1024 kB
AnonHugePages:         0 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac
7f0000200000-7f0000a00000 rw-p 00000000 00:00 0
Size:               8192 kB
Private_Dirty:      8192 kB
AnonHugePages:      8192 kB
THPeligible:           1
VmFlags: rd wr mr mw me ac hg
7f0000b01000-7f0000b42000 rw-p 00000000 fe:00 131077                     /tmp/cow data (deleted)
Size:                260 kB
Private_Clean:       252 kB
Private_Dirty:         8 kB
VmFlags: rd wr mr mw me ac
55d1c3a00000-55d1c3a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Private_Dirty:        16 kB
7ffd6a1f0000-7ffd6a211000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Private_Dirty:        12 kB
7ffd6a3f3000-7ffd6a3f5000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Private_Dirty:         0 kB
"""

ROLLUP = """\
00400000-7ffd6a3f5000 ---p 00000000 00:00 0                              [rollup]
Rss:                1612 kB
Pss:                 350 kB
Pss_Dirty:           112 kB
Pss_Anon:            112 kB
Shared_Dirty:          0 kB
Private_Dirty:       112 kB
Anonymous:           112 kB
AnonHugePages:         0 kB
"""


def test_headers_and_paths() -> None:
    maps = smaps.parse_smaps(SMAPS)
    assert len(maps) == 7
    first = maps[0]
    assert (first.start, first.end, first.perms) == (0x400000, 0x41F000, "r--p")
    assert first.path == "/usr/bin/python3.11"
    assert first.inode == 260811 and first.dev == "fe:00"
    assert maps[1].path == ""
    assert maps[3].path == "/tmp/cow data (deleted)"  # spaces kept
    assert maps[4].path == "[heap]"


def test_sizes_are_bytes_and_text_fields_kept() -> None:
    maps = smaps.parse_smaps(SMAPS)
    assert maps[0].get("Shared_Clean") == 124 * 1024
    assert maps[1].private_dirty == 512 * 1024
    assert maps[1].shared_dirty == 512 * 1024
    assert maps[2].anon_huge == 8192 * 1024
    assert maps[2].other["THPeligible"] == "1"
    assert maps[2].other["VmFlags"].endswith("hg")
    assert maps[1].get("NoSuchField") == 0


def test_anonymous_and_private() -> None:
    maps = smaps.parse_smaps(SMAPS)
    assert [m.is_anonymous for m in maps] == [False, True, True, False, True, True, False]
    assert all(m.is_private for m in maps)


def test_private_dirty_in_counts_overlapping_mappings_whole() -> None:
    maps = smaps.parse_smaps(SMAPS)
    # Exactly the second mapping.
    assert smaps.private_dirty_in(0, 0x7F0000001000, 0x7F0000101000, maps) == 512 * 1024
    # One byte of it.
    assert smaps.private_dirty_in(0, 0x7F0000100FFF, 0x7F0000101000, maps) == 512 * 1024
    # [start, end) is half-open: ending where a mapping starts does not touch it.
    assert smaps.private_dirty_in(0, 0x7F0000000000, 0x7F0000001000, maps) == 0
    # Spanning the second and third mappings.
    assert smaps.private_dirty_in(0, 0x7F0000001000, 0x7F0000300000, maps) == (512 + 8192) * 1024


def test_anon_private_dirty_skips_files_and_vdso() -> None:
    maps = smaps.parse_smaps(SMAPS)
    assert smaps.anon_private_dirty(0, maps) == (512 + 8192 + 16 + 12) * 1024


def test_rollup() -> None:
    roll = smaps.parse_rollup(ROLLUP)
    assert roll["Private_Dirty"] == 112 * 1024
    assert roll["Rss"] == 1612 * 1024
    assert "Pss_Anon" in roll


def test_rollup_without_header_line() -> None:
    body = ROLLUP.split("\n", 1)[1]
    assert smaps.parse_rollup(body)["Private_Dirty"] == 112 * 1024


def test_reads_own_process() -> None:
    # /proc/self is always readable: a smoke test of the file readers.
    maps = smaps.read_smaps("self")
    assert any(m.path == "[stack]" for m in maps)
    assert smaps.read_rollup("self")["Rss"] > 0
