"""`cowtrace report --diff BEFORE AFTER`: two fixture summaries, every changed row exact.

BEFORE is full_summary() with the Python writers split into categories (P1 gc 20 pages, P2
12, P3 3, P4 8 refcount) and object types (dict 40 pages, str 10). AFTER is what a fix such
as gc.freeze() would give: workers 101 and 102 copy 20 and 10 pages instead of 60 and 30, and
a third worker, 103, copies 5; the root's 10 are unchanged (45 pages in all). [heap] drops
from 70 to 15 pages (python3.11's .data stays at 30); the load_model site from 50 to 10 (the
recovered blocks stay at 4); writer B (leaf<f2, 10 pages) is gone and D (new<f3, 2 pages) is
new; the collector's P1 is gone and P2 grows to 15; dict drops to 12 pages, a new list type
has 3.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from cowtrace.cli import main
from cowtrace.report.diff import DiffRow, DiffSection, diff_runs
from cowtrace.report.load import load_report
from tests.unit.report_samples import full_summary, process, python_writer, write_json, writer

PAGE = 4096


def pages_of(obj: dict[str, Any], copies: int) -> None:
    obj.update(copies=copies, copied_bytes=copies * PAGE)


def before_summary() -> dict[str, Any]:
    summary = full_summary()
    summary["python_writers"][0]["category"] = "gc"
    summary["python_types"] = [
        {"type": "dict", "objects": 900, "copied_bytes": 40 * PAGE, "pages": 40},
        {"type": "str", "objects": 300, "copied_bytes": 10 * PAGE, "pages": 10},
    ]
    return summary


def after_summary() -> dict[str, Any]:
    summary = copy.deepcopy(before_summary())
    pages_of(summary["totals"], 45)
    by_pid = {p["pid"]: p for p in summary["processes"]}
    pages_of(by_pid[101], 20)
    pages_of(by_pid[102], 10)
    summary["processes"].append(process(103, 5))
    pages_of(summary["regions"][0], 15)
    pages_of(summary["allocations"][0], 10)
    summary["writers"] = [
        writer(["leaf (app)", "f1 (app)"], 30),
        writer(["other (app)"], 5, truncated=True),
        writer(["new (app)", "f3 (app)"], 2),
    ]
    summary["python_writers"] = [
        python_writer(["p2 (a.py:2)"], "leaf (app)", 15),
        python_writer(["p3 (a.py:3)"], "nope (app)", 3),
        python_writer(["p4 (a.py:4)"], "other (app)", 8),
    ]
    summary["python_types"] = [
        {"type": "dict", "objects": 300, "copied_bytes": 12 * PAGE, "pages": 12},
        {"type": "str", "objects": 300, "copied_bytes": 10 * PAGE, "pages": 10},
        {"type": "list", "objects": 50, "copied_bytes": 3 * PAGE, "pages": 3},
    ]
    return summary


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_json(tmp_path / "before.json", before_summary()),
        write_json(tmp_path / "after.json", after_summary()),
    )


def row(label: str, before: int, after: int, **extra: Any) -> DiffRow:
    return DiffRow(label, before * PAGE, after * PAGE, **extra)


def test_every_breakdown_compared(files: tuple[Path, Path]) -> None:
    before, after = (load_report(str(f)) for f in files)
    diff = diff_runs(before, after)
    assert diff.totals == row("all copies", 100, 45)
    assert diff.copies == (100, 45)
    got = {s.title: (s.rows, s.unchanged, s.missing) for s in diff.sections}
    assert got == {
        "process role": ([row("worker", 90, 35, processes=(2, 3))], 1, []),
        "mapping": ([row("[heap]", 70, 15)], 1, []),
        "allocation site": (
            [
                row(
                    "malloc: malloc (libc.so.6)",
                    50,
                    10,
                    frames=("malloc (libc.so.6)", "load_model (app)", "main (app)"),
                )
            ],
            1,
            [],
        ),
        "writer stack": (
            [
                row("leaf (app)", 10, 0, frames=("leaf (app)", "f2 (app)")),
                row("new (app)", 0, 2, frames=("new (app)", "f3 (app)")),
            ],
            2,
            [],
        ),
        "Python category": ([row("gc", 20, 0), row("refcount", 23, 26)], 0, []),
        "Python writer stack": (
            [
                row(
                    "p1 (a.py:1) [gc]",
                    20,
                    0,
                    frames=("p1 (a.py:1)", "top (a.py:9)", "(category gc)"),
                ),
                row(
                    "p2 (a.py:2) [refcount]", 12, 15, frames=("p2 (a.py:2)", "(category refcount)")
                ),
            ],
            2,
            [],
        ),
        "Python type": ([row("dict", 40, 12), row("list", 0, 3)], 1, []),
    }
    worker = diff.sections[0].rows[0]
    assert (worker.change, worker.percent()) == (-55 * PAGE, "-61.1%")
    categories = diff.sections[4].rows
    assert [r.percent() for r in categories] == ["-100.0%", "+13.0%"]
    assert diff.sections[6].rows[1].percent() == "new"


def test_a_section_one_file_lacks_is_named(tmp_path: Path) -> None:
    before = before_summary()
    del before["regions"], before["python_types"]
    diff = diff_runs(
        load_report(str(write_json(tmp_path / "b.json", before))),
        load_report(str(write_json(tmp_path / "a.json", after_summary()))),
    )
    sections = {s.title: s for s in diff.sections}
    assert sections["mapping"].missing == ["before"] and sections["mapping"].rows == []
    assert sections["Python type"].missing == ["before"]


def test_no_python_type_section_when_neither_file_has_one(tmp_path: Path) -> None:
    plain = full_summary()
    data = load_report(str(write_json(tmp_path / "s.json", plain)))
    titles = [s.title for s in diff_runs(data, data).sections]
    assert "Python type" not in titles
    assert all(not s.rows for s in diff_runs(data, data).sections)


def test_diff_as_text(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before, after = files
    code = main(["report", "--diff", str(before), str(after)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "cowtrace report --diff"
    assert re.fullmatch(
        r"before: summary .*before\.json, root 100, traced 4\.50s, root exited", lines[1]
    )
    assert re.fullmatch(
        r"after:  summary .*after\.json, root 100, traced 4\.50s, root exited", lines[2]
    )
    assert lines[3] == "copied: 400.0 KiB → 180.0 KiB (-220.0 KiB, -55.0%); copies: 100 → 45 (-55)"
    cells = lambda line: re.split(r"\s{2,}", line.strip())  # noqa: E731
    table = {cells(line)[0]: cells(line)[1:] for line in lines if line.startswith(" ")}
    assert table["worker"] == ["2 → 3", "360.0 KiB", "140.0 KiB", "-220.0 KiB", "-61.1%"]
    assert table["[heap]"] == ["280.0 KiB", "60.0 KiB", "-220.0 KiB", "-78.6%"]
    assert table["gc"] == ["80.0 KiB", "0 B", "-80.0 KiB", "-100.0%"]
    assert table["refcount"] == ["92.0 KiB", "104.0 KiB", "+12.0 KiB", "+13.0%"]
    assert table["list"] == ["0 B", "12.0 KiB", "+12.0 KiB", "new"]
    assert "by process role: 0 grew, 1 shrank, 1 the same" in out
    assert "by writer stack: 1 grew, 1 shrank, 2 the same" in out
    assert "by Python type: 1 grew, 1 shrank, 1 the same" in out


def test_diff_top_limits_rows(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before, after = files
    assert main(["report", "--diff", str(before), str(after), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "new (app)" not in out
    assert out.count("… 1 more changed (--top to show more)") == 4  # writers, 2 Python, types


def test_diff_as_folded(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """flamegraph.pl's differential input: ``stack BEFORE AFTER`` for every stack of either."""
    before, after = files
    assert main(["report", "--diff", str(before), str(after), "-f", "folded"]) == 0
    got = {
        stack: (int(b) // PAGE, int(a) // PAGE)
        for stack, b, a in (line.rsplit(" ", 2) for line in capsys.readouterr().out.splitlines())
    }
    # After: A (30) carries P2 15 (no more P1); C (5) carries 5 of P4, the other 3 and P3 stand
    # on [native callers unknown] (6); D has 2; 45 - 30 - 5 - 6 - 2 = 2 have no stack.
    assert got == {
        "[no stack]": (49, 2),
        "f1 (app);leaf (app)": (6, 15),
        "f1 (app);leaf (app);p2 (a.py:2)": (9, 15),
        "f1 (app);leaf (app);top (a.py:9);p1 (a.py:1)": (15, 0),
        "f2 (app);leaf (app)": (2, 0),
        "f2 (app);leaf (app);top (a.py:9);p1 (a.py:1)": (5, 0),
        "f2 (app);leaf (app);p2 (a.py:2)": (3, 0),
        "f3 (app);new (app)": (0, 2),
        "[native callers unknown];nope (app);p3 (a.py:3)": (3, 3),
        "[native callers unknown];other (app);p4 (a.py:4)": (3, 3),
        "[truncated stack];other (app);p4 (a.py:4)": (5, 5),
    }


@pytest.mark.parametrize("fmt", ["html", "speedscope", "pprof"])
def test_diff_in_other_formats_is_refused(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    before, after = files
    code = main(["report", "--diff", str(before), str(after), "-f", fmt, "-o", "x"])
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    assert err == f"cowtrace: error: --diff writes text or folded, not {fmt}\n"


def test_diff_with_a_bad_file_is_one_line(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["report", "--diff", str(tmp_path / "nope.json"), str(files[1])])
    err = capsys.readouterr().err
    assert code != 0 and err == f"cowtrace: error: no such file: {tmp_path / 'nope.json'}\n"


def with_pages(summary: dict[str, Any], over_budget: int | None) -> dict[str, Any]:
    """``summary`` with python_pages; ``over_budget`` None: a tracer from before the budget
    (no such key: every page was examined)."""
    pages = {"objects": 50, "no_object": 0, "not_resolved": 0, "unreadable": 0}
    if over_budget is not None:
        pages["over_budget"] = over_budget
    return {**summary, "python_pages": pages}


def types_section(tmp_path: Path, before: dict[str, Any], after: dict[str, Any]) -> DiffSection:
    diff = diff_runs(
        load_report(str(write_json(tmp_path / "b.json", before))),
        load_report(str(write_json(tmp_path / "a.json", after))),
    )
    return next(s for s in diff.sections if s.title == "Python type")


def test_pages_over_budget_are_noted_under_the_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AFTER left 500 pages unexamined (over the time budget), BEFORE none (a tracer from
    before the budget): dict's drop is partly pages not looked at, and the diff says so."""
    before = write_json(tmp_path / "before.json", with_pages(before_summary(), None))
    after = write_json(tmp_path / "after.json", with_pages(after_summary(), 500))
    assert main(["report", "--diff", str(before), str(after)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("pages not examined (over the time budget): 0 → 500")
    assert lines[at - 1].lstrip().startswith("list ")  # under the types' table, its last row
    title = next(i for i, line in enumerate(lines) if line.startswith("by Python type: "))
    assert lines[title].rstrip() == "by Python type: 1 grew, 1 shrank, 1 the same" and title < at


def test_no_note_when_no_page_was_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = types_section(tmp_path, with_pages(before_summary(), 0), with_pages(after_summary(), 0))
    assert same.not_examined is None
    both = types_section(tmp_path, with_pages(before_summary(), 7), with_pages(after_summary(), 0))
    assert both.not_examined == (7, 0)
    lacking = before_summary()
    del lacking["python_types"]
    missing = types_section(tmp_path, lacking, with_pages(after_summary(), 9))
    assert (missing.missing, missing.not_examined) == (["before"], None)
    before = write_json(tmp_path / "before.json", with_pages(before_summary(), 0))
    after = write_json(tmp_path / "after.json", with_pages(after_summary(), 0))
    assert main(["report", "--diff", str(before), str(after)]) == 0
    assert "not examined" not in capsys.readouterr().out
