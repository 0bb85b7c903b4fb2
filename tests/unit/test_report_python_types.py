"""The "copied objects by type" section of `cowtrace report`, text and HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from cowtrace.errors import CowtraceError
from cowtrace.report.html import render_html
from cowtrace.report.load import load_report
from cowtrace.report.text import render_text
from tests.unit.report_samples import EVENTS, write_lines

SUMMARY = {
    "schema": 1,
    "root_pid": 1,
    "duration_s": 1.0,
    "totals": {"copies": 10, "copied_bytes": 40960},
    "processes": [{"pid": 1, "copies": 10}],
    "python_types": [
        {
            "type": "app.models.Product",
            "objects": 200,
            "copied_bytes": 9600,
            "pages": 3,
            "by_category": {"refcount": 8000, "gc": 1600},
        },
        {"type": "dict", "objects": 5, "copied_bytes": 1200, "pages": 1, "by_category": {}},
    ],  # fmt: skip
}


def test_text_and_html_sections(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SUMMARY))
    data = load_report(str(path))
    assert data.python_types is not None
    assert data.python_types[0].by_category == {"refcount": 8000, "gc": 1600}
    console = Console(record=True, width=140)
    render_text(data, console)
    text = console.export_text()
    assert "copied objects by type" in text
    row = next(line for line in text.splitlines() if "app.models.Product" in line)
    assert row.split() == ["app.models.Product", "200", "3", "9.4", "KiB", "23.4%", "refcount",
                           "83.3%,", "gc", "16.7%"]  # fmt: skip
    page = render_html(data)
    assert '<section id="python-types"><h2>Copied objects by type</h2>' in page
    assert "<td>app.models.Product</td>" in page and "refcount 83.3%, gc 16.7%" in page


def test_summary_without_types_has_no_section(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({k: v for k, v in SUMMARY.items() if k != "python_types"}))
    data = load_report(str(path))
    console = Console(record=True, width=140)
    render_text(data, console)
    assert "copied objects by type" not in console.export_text()
    assert "python-types" not in render_html(data)


# ---- pages not examined, over the time budget (python_pages.over_budget) ---------------------

PAGES = {"objects": 3, "no_object": 1, "not_resolved": 2, "unreadable": 0, "over_budget": 1234}
PAGES_LINE = (
    "pages: 3 with objects, 1 with none, 2 not resolved, 1,234 not examined (over the time budget)"
)


def report_of(tmp_path: Path, summary: dict) -> tuple[str, str]:
    """(text report, HTML page) of ``summary``."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary))
    data = load_report(str(path))
    console = Console(record=True, width=140)
    render_text(data, console)
    return console.export_text(), render_html(data)


def test_pages_over_budget_in_text_and_html(tmp_path: Path) -> None:
    """The summary's pages line, word for word, under the table of either report."""
    text, page = report_of(tmp_path, {**SUMMARY, "python_pages": PAGES})
    lines = text.splitlines()
    at = lines.index(PAGES_LINE)
    assert "dict" in lines[at - 1]  # right under the table's last row
    section = page[page.index('<section id="python-types">') :]
    section = section[: section.index("</section>") + len("</section>")]
    assert section.endswith(f'</table><p class="note">{PAGES_LINE}</p></section>')


def test_every_page_over_budget_still_shows_the_section(tmp_path: Path) -> None:
    """No type resolved because no page was examined: the section says so rather than
    reading as "no objects were copied"."""
    pages = {"objects": 0, "no_object": 0, "not_resolved": 0, "unreadable": 0, "over_budget": 50}
    text, page = report_of(tmp_path, {**SUMMARY, "python_types": [], "python_pages": pages})
    line = (
        "pages: 0 with objects, 0 with none, 0 not resolved, 50 not examined (over the time budget)"
    )
    lines = text.splitlines()
    assert lines[lines.index("copied objects by type: none") + 1] == line
    assert (
        '<section id="python-types"><h2>Copied objects by type</h2>'
        '<p class="note">No Python objects were on the copied pages examined.</p>'
        f'<p class="note">{line}</p></section>'
    ) in page


def test_no_page_over_budget_is_not_mentioned(tmp_path: Path) -> None:
    """As in the summary: the pages line without the clause when every page was examined."""
    text, page = report_of(tmp_path, {**SUMMARY, "python_pages": {**PAGES, "over_budget": 0}})
    line = "pages: 3 with objects, 1 with none, 2 not resolved"
    assert line in text.splitlines() and f'<p class="note">{line}</p>' in page
    assert "not examined" not in text and "not examined" not in page


def test_report_line_is_the_summary_line(tmp_path: Path) -> None:
    """A summary written by the tracer, read back: the report prints the end-of-run
    summary's own pages line (one renderer, render/types_pane.py)."""
    from cowtrace.model import Counts, Snapshot
    from cowtrace.output.summary import summary_dict
    from cowtrace.render.types_pane import python_types_lines
    from cowtrace.results import AttributionView, PythonTypeStat

    stat = PythonTypeStat("dict", objects=5, copied_bytes=1200, pages=1, by_category={"gc": 1200})
    view = AttributionView(python_types=(stat,), python_pages=PAGES, python=True)
    snapshot = Snapshot(
        root_pid=1, started=0.0, now=1.0, members=[], totals=Counts(), attribution=view
    )
    assert python_types_lines(snapshot)[-1] == "  " + PAGES_LINE
    summary = summary_dict(snapshot)
    assert summary["python_pages"]["over_budget"] == 1234
    text, page = report_of(tmp_path, summary)
    assert PAGES_LINE in text.splitlines() and f'<p class="note">{PAGES_LINE}</p>' in page


def test_bad_python_pages_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    for bad in ({"over_budget": -1}, {"over_budget": "7"}, [1, 2]):
        path.write_text(json.dumps({**SUMMARY, "python_pages": bad}))
        with pytest.raises(CowtraceError, match=r"summary\.python_pages is not an object of"):
            load_report(str(path))


def test_event_log_has_no_pages_by_class(tmp_path: Path) -> None:
    """An --events line carries no Python types, hence no pages by class either: the report
    of a log has no types section at all (rather than one saying nothing was left out)."""
    data = load_report(str(write_lines(tmp_path / "e.jsonl", EVENTS)))
    assert (data.source, data.python_types, data.python_pages) == ("events", None, None)
