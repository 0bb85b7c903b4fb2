"""host/rootfs.py and what uses it: a container's paths and pids, shown as the container sees
them, opened through /proc/PID/root; non-container targets unchanged."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

from cowtrace.attribution.maps import ProcessMap, RegionRegistry, intervals_of
from cowtrace.family import Family
from cowtrace.host import elf, procmaps, rootfs
from cowtrace.kernel.abi import PE_FORK
from cowtrace.model import Member, Role
from cowtrace.output.summary import _process
from cowtrace.render import format as fmt
from cowtrace.render.plain import member_line

STATUS = "Name:\tpython3\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\n"


def test_ns_pid_is_the_innermost_pid_of_another_namespace() -> None:
    assert rootfs.parse_ns_pid(STATUS + "NSpid:\t4242\t7\n") == 7
    assert rootfs.parse_ns_pid(STATUS + "NSpid:\t4242\t300\t1\n") == 1  # nested containers
    assert rootfs.parse_ns_pid(STATUS + "NSpid:\t4242\n") is None  # cowtrace's namespace
    assert rootfs.parse_ns_pid(STATUS) is None  # kernels before 4.1 have no NSpid line
    assert rootfs.ns_pid(os.getpid()) is None
    assert rootfs.ns_pid(2**22 + 1) is None  # no such process


def test_a_process_sharing_our_root_opens_its_paths_as_they_are() -> None:
    assert rootfs.root_prefix(os.getpid()) == ""
    assert rootfs.host_path(os.getpid(), "/usr/lib/x.so") == "/usr/lib/x.so"
    assert rootfs.root_prefix(2**22 + 1) == ""  # gone: nothing better than the path itself
    assert rootfs.host_path(1234, "[heap]") == "[heap]"


def test_another_mount_namespace_is_reached_through_proc_pid_root(monkeypatch) -> None:
    real_readlink = os.readlink

    def readlink(path: str) -> str:
        if path == "/proc/4242/ns/mnt":
            return "mnt:[4026532999]"
        return real_readlink(path)

    monkeypatch.setattr(rootfs.os, "readlink", readlink)
    assert rootfs.root_prefix(4242) == "/proc/4242/root"
    assert rootfs.host_path(4242, "/app/x.py") == "/proc/4242/root/app/x.py"


def test_intervals_open_a_containers_files_under_its_root_and_show_its_paths(tmp_path) -> None:
    # A "container" tree holding a copy of an ELF file with a .data section at /app/lib.so.
    library = next(
        p
        for p in (Path("/usr/lib/x86_64-linux-gnu/libc.so.6"), Path("/lib64/libc.so.6"))
        if p.exists()
    )
    (tmp_path / "app").mkdir()
    shutil.copy(library, tmp_path / "app" / "lib.so")
    ranges = elf.section_ranges(str(library))
    assert ranges, "libc has writable sections"
    lines = procmaps.parse("7f0000000000-7f0000400000 rw-p 00000000 00:00 1 /app/lib.so\n")
    registry = RegionRegistry()
    seen = ProcessMap(registry, intervals_of(lines, str(tmp_path)))
    assert {i.name for i in seen.intervals} == {"/app/lib.so"}
    assert {r.section for r in registry.regions if r.name == "/app/lib.so"} >= {".data"}
    blind = RegionRegistry()
    ProcessMap(blind, intervals_of(lines))  # the host has no /app/lib.so: no sections
    assert {r.section for r in blind.regions if r.name == "/app/lib.so"} == {None}


def test_needed_libraries_are_looked_up_in_the_containers_tree(tmp_path) -> None:
    python = Path("/usr/bin/python3.11")
    (tmp_path / "app").mkdir()
    shutil.copy(python, tmp_path / "app" / "python")
    libc_dir = tmp_path / "usr/lib/x86_64-linux-gnu"
    libc_dir.mkdir(parents=True)
    (libc_dir / "libc.so.6").write_bytes(b"")
    found = elf.needed_libraries("/app/python", str(tmp_path))
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in found
    assert all(not p.startswith(str(tmp_path)) for p in found)  # the container's names
    assert "/usr/lib/x86_64-linux-gnu/libm.so.6" not in found  # not in the container


def member(pid: int, ns_pid: int | None) -> Member:
    return Member(pid=pid, ppid=1, comm="w", role=Role.CHILD, start_time=0.0, ns_pid=ns_pid)


def test_the_container_pid_is_shown_beside_the_host_pid_only_when_there_is_one() -> None:
    assert fmt.pid_label(member(4242, 7)) == "4242 (ns 7)"
    assert fmt.pid_label(member(4242, None)) == "4242"
    assert member_line(member(4242, 7), 0).startswith("  pid=4242 ns_pid=7 role=")
    assert member_line(member(4242, None), 0).startswith("  pid=4242 role=")
    assert _process(member(4242, 7))["ns_pid"] == 7
    assert _process(member(4242, None))["ns_pid"] is None


class _Fork:
    type = PE_FORK
    ts_ns = 1_000_000_000
    pid = 4243
    ppid = 4242
    comm = "w"
    exit_code = 0
    exit_signal = 0


def test_family_reads_the_container_pid_when_a_member_is_first_seen() -> None:
    asked: list[int] = []

    def ns_pid(pid: int) -> int | None:
        asked.append(pid)
        return {4243: 2, 4244: 4244}.get(pid)

    family = Family(4242, ns_pid=ns_pid)
    family.apply(_Fork())  # type: ignore[arg-type]
    assert family.members[4243].ns_pid == 2
    later = _Fork()
    later.pid = 4244  # the same number inside: nothing to show beside it
    family.apply(later)  # type: ignore[arg-type]
    assert family.members[4244].ns_pid is None
    assert asked == [4243, 4244]


def test_report_shows_the_container_pid_beside_the_host_pid(tmp_path) -> None:
    from rich.console import Console

    from cowtrace.report.load import load_report
    from cowtrace.report.text import render_text
    from tests.unit.report_samples import core_summary, write_json

    summary = core_summary()
    summary["processes"][0]["ns_pid"] = 7
    data = load_report(str(write_json(tmp_path / "s.json", summary)))
    assert {p.pid: p.ns_pid for p in data.processes} == {101: 7, 100: None, 102: None}
    console = Console(width=200, record=True, file=io.StringIO())
    render_text(data, console)
    text = console.export_text()
    assert "101 (ns 7)" in text
    assert "100 (ns" not in text and "102 (ns" not in text


def test_live_view_and_summary_show_the_container_pid_beside_the_host_pid() -> None:
    from rich.console import Console

    from cowtrace.model import Counts, Snapshot
    from cowtrace.render import LiveView, summary_lines

    members = [
        Member(4242, 4200, "python3", Role.ROOT, 0.0, ns_pid=1, counts=Counts(copies=3)),
        Member(4243, 4242, "python3", Role.CHILD, 0.0, ns_pid=17, counts=Counts(copies=64)),
    ]
    snap = Snapshot(4242, 0.0, 2.0, members, Counts(copies=67))
    console = Console(record=True, width=120, height=20, file=io.StringIO())
    console.print(LiveView(console).render(snap))
    live = console.export_text()
    table = "\n".join(summary_lines(snap))
    for text in (live, table):
        assert "4242 (ns 1)" in text and "4243 (ns 17)" in text, text
