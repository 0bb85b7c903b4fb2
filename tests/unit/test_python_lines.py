"""Executing lines of Python frames (issue 14, item 1): the location-table decoder against
CPython's own `co_positions()` / `co_lines()` (this interpreter and the pyenv 3.11-3.13), the
resolver reading real code objects of live processes, and the kernel's frame word."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from cowtrace.python import kernel
from cowtrace.python.detect import detect
from cowtrace.python.linetable import LineTable, line_ranges
from cowtrace.python.offsets import shipped_versions, table_offsets
from cowtrace.python.resolve import frame_name

PYENV = Path("/root/.pyenv/versions")
PYTHONS = {
    "3.11": PYENV / "3.11.7/bin/python3.11",
    "3.12": PYENV / "3.12.1/bin/python3.12",
    "3.13": PYENV / "3.13.0/bin/python3.13",
}
# Modules with a bit of everything: long functions, comprehensions, try/with, decorators.
MODULES = ("argparse", "json.decoder", "dataclasses", "asyncio.base_events")

# Run by another interpreter: for every code object of MODULES compiled there, its location
# table, first line and the line of each code unit (co_positions) and co_lines() ranges.
_DUMP = """
import importlib, json, sys, types
def codes(co):
    yield co
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            yield from codes(c)
out = []
for name in sys.argv[1:]:
    path = importlib.import_module(name).__file__
    for co in codes(compile(open(path).read(), path, "exec")):
        out.append([co.co_linetable.hex(), co.co_firstlineno,
                    [p[0] for p in co.co_positions()], list(co.co_lines())])
print(json.dumps(out))
"""


def _codes(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _check(table: bytes, first: int, positions: list, lines: list) -> None:
    decoded = LineTable.parse(table, first)
    assert [decoded.line_at(2 * unit) for unit in range(len(positions))] == positions
    for start, end, line in lines:
        assert {decoded.line_at(offset) for offset in range(start, end, 2)} == {line}
    assert decoded.line_at(2 * len(positions)) is None  # past the bytecode


def test_decoder_agrees_with_this_interpreter() -> None:
    checked = 0
    for name in MODULES:
        module = __import__(name, fromlist=["_"])
        path = module.__file__
        for code in _codes(compile(Path(path).read_text(), path, "exec")):
            positions = [p[0] for p in code.co_positions()]
            _check(code.co_linetable, code.co_firstlineno, positions, list(code.co_lines()))
            checked += len(positions)
    assert checked > 10_000


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_decoder_agrees_with_each_version(version: str) -> None:
    out = subprocess.run(
        [str(PYTHONS[version]), "-c", _DUMP, *MODULES], capture_output=True, text=True, check=True
    ).stdout
    dumped = json.loads(out)
    assert len(dumped) > 100
    for table, first, positions, lines in dumped:
        _check(bytes.fromhex(table), first, positions, [tuple(r) for r in lines])


def test_decoder_edges() -> None:
    def f():  # noqa: ANN202
        return 1

    table = LineTable.parse(f.__code__.co_linetable, f.__code__.co_firstlineno)
    assert table.line_at(-2) == f.__code__.co_firstlineno  # a frame not started yet
    with pytest.raises(ValueError):
        line_ranges(b"\x01\x02", 1)  # no start bit
    with pytest.raises(ValueError):
        line_ranges(bytes([0x80 | (13 << 3)]), 1)  # a line delta cut off
    # A no-location entry has no line and leaves the counter as it was.
    assert line_ranges(bytes([0x80 | (15 << 3), 0x80 | (11 << 3), 0, 0]), 10) == [
        (0, 2, None),
        (2, 4, 11),
    ]


# The target's function: lines of its own, a loop, a call; prints what it is.
_TARGET = """
import sys
def target(items):
    total = 0
    for item in items:
        total += len(
            item)
    return total
code = target.__code__
print(id(code), code.co_firstlineno, [p[0] for p in code.co_positions()], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_frame_names_from_a_live_process(version: str) -> None:
    """The resolver reads the code object (name, file, first line, location table) from the
    target's memory: each instruction's frame name carries that instruction's line."""
    proc = subprocess.Popen(
        [str(PYTHONS[version]), "-c", _TARGET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        addr_text, first_text, positions_text = proc.stdout.readline().split(" ", 2)
        addr, first, positions = int(addr_text), int(first_text), json.loads(positions_text)
        image = detect(proc.pid).image
        assert image is not None
        # The kernel's instruction: code units from the code object's start.
        base = image.offsets.code_code_adaptive // 2
        names = [frame_name(image, [proc.pid], addr, base + unit) for unit in range(len(positions))]
        expected = [f"target (<string>:{line if line else first})" for line in positions]
        assert names == expected
        assert len(set(names)) >= 4  # the def, the loop, the call over two lines, the return
        # Before the first instruction (3.11/3.12 prev_instr) and unknown: the first line.
        assert frame_name(image, [proc.pid], addr, base - 1) == f"target (<string>:{first})"
        assert frame_name(image, [proc.pid], addr, None) == f"target (<string>:{first})"
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_frame_word_split() -> None:
    code = 0x7F12_3456_7890
    assert kernel.split_frame(code | (0x61 << kernel.PY_CODE_BITS)) == (code, 0x61)
    assert kernel.split_frame(code | (kernel.PY_NO_INSTR << kernel.PY_CODE_BITS)) == (code, None)


@pytest.mark.parametrize("version", shipped_versions())
def test_frame_read_window_covers_code_previous_and_instruction(version: str) -> None:
    """One read per frame: the window holds the three fields, within the kernel's PY_WINDOW."""

    class Table(dict):
        Leaf = SimpleNamespace

        @staticmethod
        def Key(pid: int) -> int:  # noqa: N802 (bcc's name)
            return pid

    class Counter(dict):
        """py_generation: one u64 the kernel reads as a u16."""

        @staticmethod
        def Key(index: int) -> int:  # noqa: N802 (bcc's name)
            return index

        @staticmethod
        def Leaf(value: int) -> SimpleNamespace:  # noqa: N802 (bcc's name)
            return SimpleNamespace(value=value)

    table = Table()
    generation = Counter({0: SimpleNamespace(value=4)})
    offsets = table_offsets(version)
    image = SimpleNamespace(offsets=offsets, runtime=0x1000)
    kernel.set_layout({"py_procs": table, "py_generation": generation}, 7, image)
    assert generation[0].value == 5  # threads that found no CPython look again
    leaf = table[7]
    assert leaf.frame_window_size <= kernel.PY_WINDOW
    for field in ("frame_code", "frame_previous", "frame_instr"):
        relative = getattr(leaf, field)
        assert relative == getattr(offsets, field) - leaf.frame_window
        assert relative >= 0 and relative + 8 <= leaf.frame_window_size


def test_this_interpreter_is_311() -> None:
    """The decoder test above runs in the venv's interpreter: Debian's 3.11."""
    assert sys.version_info[:2] == (3, 11)
