"""Frames with no symbol: `module+0xOFFSET (module)` with the module's build-id, named later by
`cowtrace report` from a debug file in a `.build-id` tree (issue 16, item 5).

A small shared object is built with gcc, then stripped (what the traced process maps) and its
symbols kept apart with `objcopy --only-keep-debug` (what a -dbgsym package installs).  The
expected file offset and build-id come from readelf, not from cowtrace's ELF reader.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cowtrace.cli import main
from cowtrace.host import procmaps, symbols
from cowtrace.kernel.stacks import KernelStackResolver
from cowtrace.report.load import load_report
from cowtrace.report.resymbolize import Resymbolizer, resymbolize
from tests.unit.report_samples import core_summary, python_writer, write_json, writer

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gcc", "objcopy", "readelf", "nm")),
    reason="needs gcc and binutils",
)

SOURCE = r"""
static int counter[4096];
__attribute__((noinline)) static int hidden_writer(int i) { counter[i] += i; return counter[i]; }
int exported_entry(int i) { return hidden_writer(i) + 1; }
"""
PID = 4343
BASE = 0x7F00_0000_0000


def _run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The stripped library, a debug tree holding its symbols, and what readelf says."""
    work = tmp_path_factory.mktemp("symbols")
    (work / "lib.c").write_text(SOURCE)
    full, lib = work / "full.so", work / "libsym.so"
    _run("gcc", "-O1", "-g", "-shared", "-fPIC", "-Wl,--build-id", "-o", full, work / "lib.c")
    _run("strip", "--strip-all", "-o", lib, full)
    build_id = re.search(r"Build ID: ([0-9a-f]+)", _run("readelf", "-n", lib))[1]
    root = work / "debug"
    debug = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    debug.parent.mkdir(parents=True)
    _run("objcopy", "--only-keep-debug", full, debug)
    vaddr = int(re.search(r"([0-9a-f]+) t hidden_writer", _run("nm", full))[1], 16) + 4
    loads = [
        [int(x, 16) for x in line.split()[1:5]]  # offset, vaddr, paddr, filesz
        for line in _run("readelf", "-lW", lib).splitlines()
        if line.split()[:1] == ["LOAD"]
    ]
    (offset,) = [o + vaddr - v for o, v, _p, size in loads if v <= vaddr < v + size]
    return {"lib": lib, "root": root, "build_id": build_id, "vaddr": vaddr, "offset": offset}


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch, built: dict[str, object]) -> KernelStackResolver:
    """PID maps the stripped object's text so that BASE + its link address is in it."""
    lib, vaddr, offset = str(built["lib"]), int(built["vaddr"]), int(built["offset"])  # type: ignore[call-overload]
    start = BASE + vaddr - offset  # file offset 0 at `start`: BASE + vaddr is file offset `offset`
    line = procmaps.MapLine(start, start + (1 << 20), "r-xp", 0, lib)
    monkeypatch.setattr(symbols.procmaps, "read", lambda pid: [line] if pid == PID else [])
    return KernelStackResolver(None, root=lambda: PID)


def test_unnamed_frame_keeps_offset_and_build_id(
    resolver: KernelStackResolver, built: dict[str, object]
) -> None:
    frame = resolver.symbolize(PID, BASE + int(built["vaddr"]))  # type: ignore[call-overload]
    assert frame == f"libsym.so+0x{built['offset']:x} (libsym.so)"
    assert resolver.symbolize(PID, 0x1234) == "[unknown]"
    (info,) = resolver.modules().values()
    assert resolver.modules().keys() == {"libsym.so"}
    assert info["path"] == str(built["lib"])
    assert info["build_id"] == built["build_id"]


def _summary(tmp_path: Path, resolver: KernelStackResolver, built: dict[str, object]) -> Path:
    frame = resolver.symbolize(PID, BASE + int(built["vaddr"]))  # type: ignore[call-overload]
    leaf = frame.split(" ")[0]
    document = core_summary()
    document["writers"] = [writer([frame, "main (app)"], 100)]
    document["python_writers"] = [python_writer(["f (a.py:1)"], leaf, 10)]
    document["modules"] = json.loads(json.dumps(resolver.modules()))
    return write_json(tmp_path / "summary.json", document)


def test_report_names_frames_from_debug_tree(
    tmp_path: Path, resolver: KernelStackResolver, built: dict[str, object]
) -> None:
    data = load_report(str(_summary(tmp_path, resolver, built)))
    assert resymbolize(data, str(built["root"])) == 2
    assert data.writers is not None and data.python_writers is not None
    assert list(data.writers[0].frames) == ["hidden_writer (libsym.so)", "main (app)"]
    assert data.python_writers[0].native_leaf == "hidden_writer"


def test_report_without_debug_file_keeps_frames(
    tmp_path: Path, resolver: KernelStackResolver, built: dict[str, object]
) -> None:
    data = load_report(str(_summary(tmp_path, resolver, built)))
    assert resymbolize(data, str(tmp_path / "empty")) == 0
    assert data.writers is not None
    assert data.writers[0].frames[0] == f"libsym.so+0x{built['offset']:x} (libsym.so)"


def test_report_command_uses_debug_dir_env(
    tmp_path: Path,
    resolver: KernelStackResolver,
    built: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = _summary(tmp_path, resolver, built)
    out = tmp_path / "out.folded"
    monkeypatch.setenv("COWTRACE_DEBUG_DIR", str(built["root"]))
    assert main(["report", str(summary), "--format", "folded", "-o", str(out)]) == 0
    assert "main (app);hidden_writer (libsym.so)" in out.read_text()
    monkeypatch.delenv("COWTRACE_DEBUG_DIR")
    assert main(["report", str(summary), "-f", "folded", "-o", str(out), "--debug-dir",
                 str(built["root"])]) == 0  # fmt: skip
    assert "hidden_writer (libsym.so)" in out.read_text()


def test_other_frames_are_left_alone() -> None:
    names = Resymbolizer({"libx.so": {"build_id": "ab" * 20, "loads": [[0, 0, 4096]]}}, "/no")
    for frame in ("f (libx.so)", "[unknown] (libx.so)", "libx.so+0x10 (liby.so)", "f (a.py:3)"):
        assert names.name(frame) == frame
    assert names.named == 0


def test_event_log_modules_resymbolized(
    tmp_path: Path, resolver: KernelStackResolver, built: dict[str, object]
) -> None:
    """An --events log carries "modules" on a line; report names every line's frame."""
    from tests.unit.report_samples import event, write_lines

    frame = resolver.symbolize(PID, BASE + int(built["vaddr"]))  # type: ignore[call-overload]
    first = event(100, "copy", 0x1000, mapping="heap", stack=[frame, "main (app)"])
    first["modules"] = json.loads(json.dumps(resolver.modules()))
    second = event(101, "copy", 0x2000, mapping="heap", stack=[frame, "main (app)"])
    data = load_report(str(write_lines(tmp_path / "events.jsonl", [first, second])))
    assert resymbolize(data, str(built["root"])) == 2  # the writer row and the sample
    assert data.writers is not None
    assert [list(w.frames) for w in data.writers] == [["hidden_writer (libsym.so)", "main (app)"]]
    assert data.writers[0].copies == 2
    assert data.samples is not None
    assert all(s.native == ("hidden_writer (libsym.so)", "main (app)") for s in data.samples)


def test_two_offsets_in_one_function_become_one_writer(
    tmp_path: Path, resolver: KernelStackResolver, built: dict[str, object]
) -> None:
    """`hidden_writer` at two offsets: two rows before the debug file, one after."""
    frame = resolver.symbolize(PID, BASE + int(built["vaddr"]))  # type: ignore[call-overload]
    other = f"libsym.so+0x{int(built['offset']) + 2:x} (libsym.so)"  # type: ignore[call-overload]
    document = core_summary()
    document["writers"] = [writer([frame], 60), writer([other], 30), writer(["main (app)"], 10)]
    document["modules"] = json.loads(json.dumps(resolver.modules()))
    data = load_report(str(write_json(tmp_path / "summary.json", document)))
    assert resymbolize(data, str(built["root"])) == 2
    assert data.writers is not None
    assert [(list(w.frames), w.copies, w.copied_bytes) for w in data.writers] == [
        (["hidden_writer (libsym.so)"], 90, 90 * 4096),
        (["main (app)"], 10, 10 * 4096),
    ]
