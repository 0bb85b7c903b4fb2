"""Python writer stacks, the pure parts: offsets, detection, categories, "why" lines, outputs."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cowtrace.host.elf import load as load_symbols
from cowtrace.kernel.abi import EVENT_DTYPE, PYF_FINALIZING, PYF_GC
from cowtrace.model import Counts, Snapshot
from cowtrace.output.events import EventLog
from cowtrace.output.summary import summary_dict
from cowtrace.python.detect import detect
from cowtrace.python.offsets import (
    DEBUG_OFFSETS_SIZE,
    parse_debug_offsets,
    shipped_versions,
    table_offsets,
)
from cowtrace.python.writers import PythonWriters, ResolvedStack, categorize, remedies
from cowtrace.render.live import LiveView
from cowtrace.render.summary import summary_lines
from cowtrace.results import AttributionView, FaultPythonStacks

PYENV = Path("/root/.pyenv/versions")
GEN_OFFSETS = Path(__file__).resolve().parents[2] / "tools" / "gen_offsets.py"
PYTHONS = {
    "3.11": PYENV / "3.11.7/bin/python3.11",
    "3.12": PYENV / "3.12.1/bin/python3.12",
    "3.13": PYENV / "3.13.0/bin/python3.13",
}


def test_table_ships_311_to_313_and_nothing_else():
    assert shipped_versions() == ["3.11", "3.12", "3.13"]
    assert table_offsets("3.10") is None
    assert table_offsets("3.12").cframe_current_frame == 0  # 3.12 reaches frames via cframe
    assert table_offsets("3.13").cframe_current_frame == -1


def test_shipped_table_is_what_the_generator_makes():
    """The committed table matches the headers installed here (Debian's 3.11 included)."""
    spec = importlib.util.spec_from_file_location("gen_offsets", GEN_OFFSETS)
    gen_offsets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_offsets)  # a build-time tool, outside the package
    table = json.loads((resources.files("cowtrace.python") / "offsets_table.json").read_text())
    for python in [*PYTHONS.values(), Path("/usr/bin/python3.11")]:
        values = gen_offsets.offsets_of(str(python))
        hexv = values.pop("py_version_hex")
        shipped = dict(table[f"{hexv >> 24}.{(hexv >> 16) & 0xFF}"])
        shipped.pop("py_version_hex")
        assert shipped == values, python


def test_313_debug_offsets_agree_with_its_headers():
    """_Py_DebugOffsets, read from the initializer of _PyRuntime in libpython3.13."""
    symbols = load_symbols(str(PYENV / "3.13.0/lib/libpython3.13.so.1.0"))
    blob = symbols.read(symbols.objects["_PyRuntime"], DEBUG_OFFSETS_SIZE)
    assert parse_debug_offsets(blob) == table_offsets("3.13")
    assert parse_debug_offsets(b"not a cookie" + blob[12:]) is None


@pytest.fixture
def sleeping():
    started = []

    def start(python: Path) -> int:
        proc = subprocess.Popen(
            [str(python), "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout.readline() == "up\n"
        return proc.pid

    yield start
    for proc in started:
        proc.stdin.close()
        proc.wait(timeout=10)


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_detects_version_and_runtime(version, sleeping):
    pid = sleeping(PYTHONS[version])
    found = detect(pid)
    assert found.image is not None and found.notice is None
    assert found.image.version == version
    assert Path(found.image.path).name.startswith(f"libpython{version}")


def test_debian_static_interpreter_is_detected(sleeping):
    found = detect(sleeping(Path("/usr/bin/python3.11")))
    assert found.image is not None and found.image.path == "/usr/bin/python3.11"


def test_a_version_without_offsets_gets_a_notice_not_an_error(sleeping):
    found = detect(sleeping(PYENV / "3.10.13/bin/python3.10"))
    assert found.image is None
    assert "CPython 3.10" in found.notice and "3.11, 3.12, 3.13" in found.notice


def test_a_c_program_is_not_python():
    proc = subprocess.Popen(["sleep", "5"])
    try:
        found = detect(proc.pid)
        assert found.image is None and found.notice is None and not found.pending
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("flags", "leaf", "module", "category"),
    [
        (0, "_PyEval_EvalFrameDefault", "libpython3.12.so.1.0", "refcount"),
        (0, "listiter_next", "libpython3.11.so.1.0", "refcount"),
        (0, "python3.11+0x17d033", "python3.11", "refcount"),
        (0, "gc_collect_main", "libpython3.11.so.1.0", "gc"),
        (PYF_GC, "_PyObject_Free", "libpython3.12.so.1.0", "gc"),
        (0, "_PyObject_Free", "libpython3.12.so.1.0", "allocator"),
        (0, "_int_free", "libc.so.6", "allocator"),
        (PYF_FINALIZING | PYF_GC, "gc_collect_main", "libpython3.12.so.1.0", "teardown"),
        (0, "__memmove_avx_unaligned_erms", "libc.so.6", "other"),
    ],
)
def test_categories(flags, leaf, module, category):
    assert categorize(flags, leaf, module) == category


def writers_fixture() -> PythonWriters:
    writers = PythonWriters()
    writers.add(ResolvedStack(("child (f.py:9)",), "gc_collect_main", "gc"), 50)
    writers.add(ResolvedStack(("touch (f.py:3)", "child (f.py:9)"), "_PyEval", "refcount"), 30)
    writers.add(ResolvedStack(("other (f.py:5)",), "_PyEval", "refcount"), 10)
    writers.add(ResolvedStack((), "_int_free", "teardown"), 10)
    return writers


def test_why_lines_from_shares():
    assert writers_fixture().why() == (
        "garbage collection (50% of copies): gc.freeze() after preload would have saved 0.2 MiB",
        "reference counting on objects reached from touch (f.py:3) (30% of copies)",
        "interpreter teardown at exit (10% of copies): consider os._exit in workers",
    )
    stats = writers_fixture().stats()
    assert [s.copies for s in stats] == [50, 30, 10, 10]


def test_remedies_from_the_categories():
    """gc.freeze() avoids the collector's copies, data out of objects the refcount ones; shares
    of the CPython members' copies (100 here), largest first."""
    found = remedies(writers_fixture())
    assert [(r.remedy, r.copies, r.share, r.copied_bytes) for r in found] == [
        ("gc_freeze", 50, 0.5, 50 * 4096),
        ("data_out_of_objects", 40, 0.4, 40 * 4096),
    ]
    assert remedies(PythonWriters()) == ()


def python_snapshot() -> Snapshot:
    writers = writers_fixture()
    view = AttributionView(
        python_writers=writers.stats(), python_remedies=remedies(writers), why=writers.why()
    )
    return Snapshot(root_pid=1, started=0.0, now=1.0, members=[], totals=Counts(), attribution=view)


def test_json_sections():
    data = summary_dict(python_snapshot())
    assert data["python_writers"][0] == {
        "frames": ["child (f.py:9)"],
        "native_leaf": "gc_collect_main",
        "category": "gc",
        "copies": 50,
        "copied_bytes": 50 * 4096,
    }
    assert data["why"][0].startswith("garbage collection (50% of copies)")
    assert data["python_remedies"][0] == {
        "remedy": "gc_freeze",
        "action": "gc.freeze() in the master before forking",
        "avoids_copies": 50,
        "avoids_bytes": 50 * 4096,
        "share_of_python_copies": 0.5,
    }
    bare = Snapshot(root_pid=1, started=0.0, now=1.0, members=[], totals=Counts())
    assert "python_writers" not in summary_dict(bare)


def test_events_carry_the_python_stack(tmp_path):
    records = np.zeros(2, dtype=EVENT_DTYPE)
    records["kind"] = [1, 2]
    records["pid"] = 7
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path))
    touch = ResolvedStack(("touch (f.py:3)",), "PyObject_Malloc (python3.11)", "refcount")
    log.write(records, pystacks=FaultPythonStacks(np.array([0, -1]), (touch,)))
    log.write(records)  # Python stacks off: no field
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["pystack"] == ["touch (f.py:3)"] and lines[1]["pystack"] is None
    assert "pystack" not in lines[2]
    assert lines[0]["kind"] == "copy" and lines[1]["kind"] == "reuse"


def test_live_pane_and_summary_lines():
    console = Console(file=io.StringIO(), width=140, height=40, record=True)
    console.print(LiveView(console=console).render(python_snapshot()))
    text = console.export_text()
    assert "top Python writers" in text
    assert "touch (f.py:3) ← child (f.py:9)" in text
    assert "why: garbage collection (50% of copies)" in text
    lines = summary_lines(python_snapshot())
    assert "top Python writers:" in lines
    assert any("gc" in line and "child (f.py:9)" in line for line in lines)


def test_reading_a_garbage_address_is_none_not_an_error() -> None:
    """Pointers read from another process may be anything: above the user address space, a
    pread offset overflows."""
    import os

    from cowtrace.host import remote_reads

    assert remote_reads.read(os.getpid(), 0xFFFF_8880_0000_0000, 8) is None
    assert remote_reads.read(os.getpid(), 0, 8) is None
