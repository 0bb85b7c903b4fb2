"""Read a `--json` summary or an `--events` log into a :class:`ReportData`.

The file's kind is told from its content, not its name: an event log's first line is a JSON
object with ``kind`` and ``pid``; a summary is one JSON object with ``"schema": 1``. Anything
else is a one-line :class:`CowtraceError` naming the file (and the line, for a log), never a
traceback: these files are often cut short by a killed tracer or edited by hand.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from cowtrace.errors import CowtraceError, user_file
from cowtrace.host.memory import PAGE_SIZE
from cowtrace.report.aggregate import aggregate_events
from cowtrace.report.model import ProcessRow, ReportData, Totals
from cowtrace.results import (
    AllocationStat,
    BlockStat,
    ProcessExit,
    PythonTypeStat,
    PythonWriterStat,
    RegionStat,
    WriterStat,
)

SUPPORTED_SCHEMA = 1
READ_ERRORS = {
    FileNotFoundError: "no such file: {path}",
    PermissionError: "cannot read {path}: permission denied",
}


def load_report(path: str) -> ReportData:
    """Load either kind of file ('-': stdin); raise CowtraceError for anything that is neither."""
    if path == "-":
        return _read(sys.stdin, "stdin")
    if os.path.isdir(path):
        raise CowtraceError(f"{path} is a directory, not a summary or event log")
    with (
        user_file(path, "read", READ_ERRORS),
        open(path, encoding="utf-8") as stream,
    ):
        return _read(stream, path)


def _read(stream: TextIO, name: str) -> ReportData:
    """Tell the kind from the first non-blank line, then read on without seeking (stdin)."""
    try:
        head = [stream.readline()]
        while head[-1] and not head[-1].strip():
            head.append(stream.readline())
        if not head[-1]:
            raise CowtraceError(f"{name} is empty: nothing to report")
        if _is_event_line(head[-1]):
            return aggregate_events(itertools.chain(head, stream), name)
        text = "".join(head) + stream.read()
    except UnicodeDecodeError:
        raise CowtraceError(f"{name} is not text: expected a JSON summary or event log") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise CowtraceError(
            f"{name} is not JSON (line {error.lineno}: {error.msg}): expected a cowtrace "
            "--json summary or --events log"
        ) from None
    return summary_report(document, name)


def _is_event_line(line: str) -> bool:
    """True when ``line`` is one complete JSON object that looks like an event."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "kind" in obj and "pid" in obj and "schema" not in obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_frames(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(f, str) for f in value)


class _Fields:
    """Typed access to one JSON object, with errors that say where in the file."""

    def __init__(self, obj: Any, where: str, path: str) -> None:
        if not isinstance(obj, dict):
            raise CowtraceError(f"{path}: {where} is not a JSON object")
        self.obj = obj
        self.where = where
        self.path = path

    def _bad(self, key: str, want: str) -> CowtraceError:
        return CowtraceError(f"{self.path}: {self.where}.{key} is not {want}")

    def _get(self, key: str, valid: Callable[[Any], bool], want: str) -> Any:
        """The value at ``key``: None when absent, else what ``valid`` accepts (an error
        saying ``want`` otherwise)."""
        value = self.obj.get(key)
        if value is not None and not valid(value):
            raise self._bad(key, want)
        return value

    def int(self, key: str, default: int | None = None, *, required: bool = False) -> int | None:
        value = self._get(key, _is_int, "an integer")
        if value is None:
            if required:
                raise CowtraceError(f"{self.path}: {self.where} has no {key!r}")
            return default
        return value

    def count(self, key: str) -> int:
        """A non-negative count, 0 when absent."""
        value = self.int(key, 0)
        assert value is not None
        if value < 0:
            raise self._bad(key, "a non-negative integer")
        return value

    def members(self, key: str) -> int | None:
        """How many processes: a count, or a list of pids (counted), None when absent."""
        value = self.obj.get(key)
        if isinstance(value, list):
            return len(value)
        return self.int(key)

    def float(self, key: str) -> float | None:
        value = self._get(key, lambda v: _is_int(v) or isinstance(v, float), "a number")
        return None if value is None else float(value)

    def str(self, key: str) -> str | None:
        return self._get(key, lambda v: isinstance(v, str), "a string")

    def bool(self, key: str) -> bool | None:
        return self._get(key, lambda v: isinstance(v, bool), "true or false")

    def frames(self, key: str) -> tuple[str, ...]:
        value = self._get(key, _is_frames, "a list of strings")
        return () if value is None else tuple(value)

    def items(self, key: str) -> list[Any] | None:
        """A list section; None when the file does not have it."""
        return self._get(key, lambda v: isinstance(v, list), "a list")

    def outcomes(self) -> dict[str, int]:
        """``copies``, ``copied_bytes`` (see bytes_of), ``reuses``, ``zero_fills``: the
        counts a process and the totals both carry."""
        copies = self.count("copies")
        return {
            "copies": copies,
            "copied_bytes": self.bytes_of(copies),
            "reuses": self.count("reuses"),
            "zero_fills": self.count("zero_fills"),
        }

    def bytes_of(self, copies: int) -> int:
        """``copied_bytes`` as written, else copies × page size."""
        value = self.int("copied_bytes")
        return copies * PAGE_SIZE if value is None else value


def summary_report(document: Any, path: str) -> ReportData:
    """A parsed `--json` summary as report data; CowtraceError when it is not one."""
    if not isinstance(document, dict):
        raise CowtraceError(f"{path} is JSON but not a cowtrace summary (not an object)")
    if "schema" not in document:
        raise CowtraceError(f'{path} is JSON but not a cowtrace summary (no "schema")')
    schema = document["schema"]
    if schema != SUPPORTED_SCHEMA or isinstance(schema, bool):
        raise CowtraceError(
            f"{path} has summary schema {schema!r}; this cowtrace reads schema {SUPPORTED_SCHEMA}"
        )
    top = _Fields(document, "summary", path)
    totals_obj = document.get("totals")
    if totals_obj is None:
        raise CowtraceError(f'{path}: summary has no "totals"')
    t = _Fields(totals_obj, "totals", path)
    totals = Totals(
        **t.outcomes(),
        file_copies=t.count("file_copies"),
        gup_copies=t.count("gup_copies"),
        lost_events=t.int("lost_events"),
    )
    processes_raw = top.items("processes")
    if processes_raw is None:
        raise CowtraceError(f'{path}: summary has no "processes"')
    processes = [_process(p, i, path) for i, p in enumerate(processes_raw)]
    root_pid = top.int("root_pid")
    # Root first, then the heaviest copiers: the order the terminal summary uses too.
    processes.sort(key=lambda p: (p.pid != root_pid, -p.copies, p.pid))

    def section(key: str, parse: Any) -> list[Any] | None:
        items = top.items(key)
        return (
            None if items is None else [parse(x, f"{key}[{i}]", path) for i, x in enumerate(items)]
        )

    why = top.items("why")
    if why is not None and not all(isinstance(line, str) for line in why):
        raise CowtraceError(f"{path}: summary.why is not a list of strings")
    return ReportData(
        source="summary",
        path=path,
        totals=totals,
        processes=processes,
        root_pid=root_pid,
        duration_s=top.float("duration_s"),
        end_reason=top.str("end_reason"),
        regions=section("regions", _region),
        allocations=section("allocations", _allocation),
        writers=section("writers", _writer),
        python_writers=section("python_writers", _python_writer),
        why=why,
        python_types=section("python_types", _python_type),
        python_pages=_python_pages(document.get("python_pages"), path),
        modules=_modules(document.get("modules"), path),
    )


def _modules(obj: Any, path: str) -> dict[str, Any] | None:
    """The summary's "modules" ({basename: {"path", "build_id", "loads"}}); entries are
    checked when used (report/resymbolize.py), only the shape here."""
    if obj is None:
        return None
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise CowtraceError(f"{path}: summary.modules is not an object of objects")
    return obj


def _python_pages(obj: Any, path: str) -> dict[str, int] | None:
    """The summary's "python_pages" ({class: pages}, over_budget among them)."""
    if obj is None:
        return None
    if not isinstance(obj, dict) or not all(_is_int(v) and v >= 0 for v in obj.values()):
        raise CowtraceError(f"{path}: summary.python_pages is not an object of counts")
    return {str(k): v for k, v in obj.items()}


def _process(obj: Any, index: int, path: str) -> ProcessRow:
    f = _Fields(obj, f"processes[{index}]", path)
    outcomes = f.outcomes()
    exit_writers = f.items("exit_writers") or []
    exit_copies = f.int("exit_copies")
    return ProcessRow(
        pid=f.int("pid", required=True) or 0,
        ppid=f.int("ppid"),
        comm=f.str("comm"),
        role=f.str("role"),
        **outcomes,
        exited=f.bool("exited"),
        exit_code=f.int("exit_code"),
        exit_signal=f.int("exit_signal"),
        exit=None
        if exit_copies is None
        else ProcessExit(
            exit_copies,
            tuple(
                _writer(w, f"processes[{index}].exit_writers[{j}]", path)
                for j, w in enumerate(exit_writers)
            ),
        ),
        ns_pid=f.int("ns_pid"),
    )


def _region(obj: Any, where: str, path: str) -> RegionStat:
    f = _Fields(obj, where, path)
    copies = f.count("copies")
    return RegionStat(
        kind=f.str("kind") or "other",
        name=f.str("name") or "",
        section=f.str("section"),
        copies=copies,
        copied_bytes=f.bytes_of(copies),
        reuses=f.count("reuses"),
        zero_fills=f.count("zero_fills"),
        processes=f.members("processes") or 0,
    )


def _allocation(obj: Any, where: str, path: str) -> AllocationStat:
    f = _Fields(obj, where, path)
    copies = f.count("copies")
    largest = []
    for i, block in enumerate(f.items("largest") or []):
        b = _Fields(block, f"{where}.largest[{i}]", path)
        largest.append(
            BlockStat(
                addr=b.count("addr"), size=b.count("size"), copied_pages=b.count("copied_pages")
            )
        )
    return AllocationStat(
        site=f.frames("site"),
        origin=f.str("origin") or "malloc",
        allocator=f.str("allocator"),
        blocks=f.count("blocks"),
        block_bytes=f.count("block_bytes"),
        copies=copies,
        copied_bytes=f.bytes_of(copies),
        largest=tuple(largest),
    )


def _writer(obj: Any, where: str, path: str) -> WriterStat:
    f = _Fields(obj, where, path)
    copies = f.count("copies")
    return WriterStat(
        frames=f.frames("frames"),
        copies=copies,
        copied_bytes=f.bytes_of(copies),
        processes=f.members("processes"),
        truncated=bool(f.bool("truncated")),
    )


def _python_writer(obj: Any, where: str, path: str) -> PythonWriterStat:
    f = _Fields(obj, where, path)
    copies = f.count("copies")
    return PythonWriterStat(
        frames=f.frames("frames"),
        native_leaf=f.str("native_leaf"),
        category=f.str("category"),
        copies=copies,
        copied_bytes=f.bytes_of(copies),
    )


def _python_type(obj: Any, where: str, path: str) -> PythonTypeStat:
    f = _Fields(obj, where, path)
    categories = obj.get("by_category") or {}
    if not isinstance(categories, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in categories.values()
    ):
        raise CowtraceError(f"{path}: {where}.by_category is not an object of integers")
    return PythonTypeStat(
        type=f.str("type") or "?",
        objects=f.int("objects"),
        copied_bytes=f.count("copied_bytes"),
        pages=f.int("pages"),
        by_category={str(k): v for k, v in categories.items()},
    )
