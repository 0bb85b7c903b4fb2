"""The "copied objects by type" section of `cowtrace report`, text and HTML."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from cowtrace.report.html import render_html
from cowtrace.report.load import load_report
from cowtrace.report.text import render_text

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
