"""The HTML report in real headless Chromium: it renders with no console error, asks the network
for nothing but itself, draws the flame graph's bars with the right frames and widths, and
zooms on a real mouse click.

Never skipped: `make test` installs Debian's chromium (TEST_PACKAGES), so a missing browser is
a broken set-up and fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cowtrace.report.html import render_html
from cowtrace.report.load import load_report
from tests.browser.cdp import Chromium, chromium_path
from tests.unit.report_samples import EVENTS, core_summary, full_summary, write_json, write_lines

BARS_JS = """
JSON.stringify(Array.from(document.querySelectorAll('#flame g.fg')).map(function (g) {
  var r = g.querySelector('rect').getBoundingClientRect();
  return {name: g.dataset.n, kind: g.getAttribute('class'), shown: g.style.display !== 'none',
          width: r.width, left: r.left, top: r.top, height: r.height,
          title: g.querySelector('title').textContent};
}))
"""


@pytest.fixture(scope="module")
def browser():
    binary = chromium_path()
    assert binary, "chromium is not installed: `make test` installs it (TEST_PACKAGES)"
    with Chromium(binary) as chromium:
        yield chromium
    # The whole process group is gone (Chromium.__exit__ waits for it).
    assert chromium.proc is not None and chromium.proc.returncode is not None


def open_report(browser: Chromium, page_path: Path, flame: bool = True) -> tuple[str, list[dict]]:
    import json

    url = page_path.resolve().as_uri()
    session = browser.open_page(url)
    if flame:
        assert browser.evaluate(session, "document.getElementById('flame').dataset.ready") == "1"
    assert browser.problems(session) == []
    assert browser.requests(session) == [url]  # the page itself, nothing else
    return session, json.loads(browser.evaluate(session, BARS_JS))


def click(browser: Chromium, session: str, x: float, y: float) -> None:
    for kind in ("mousePressed", "mouseReleased"):
        browser.call(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            session=session,
        )


def test_summary_page_renders_flame_graph_and_zooms(browser: Chromium, tmp_path: Path) -> None:
    summary_path = write_json(tmp_path / "s.json", full_summary())
    page = tmp_path / "report.html"
    page.write_text(render_html(load_report(str(summary_path))))
    session, bars = open_report(browser, page)
    names = [b["name"] for b in bars]
    assert names == [
        "all copies",
        "[no stack]",
        "f1 (app)",
        "leaf (app)",
        "top (a.py:9)",
        "p1 (a.py:1)",
        "p2 (a.py:2)",
        "f2 (app)",
        "leaf (app)",
        "top (a.py:9)",
        "p1 (a.py:1)",
        "p2 (a.py:2)",
        "[native callers unknown]",
        "nope (app)",
        "p3 (a.py:3)",
        "other (app)",
        "p4 (a.py:4)",
        "[truncated stack]",
        "other (app)",
        "p4 (a.py:4)",
    ]
    by_name = {b["name"]: b for b in bars}
    root, f1 = by_name["all copies"], by_name["f1 (app)"]
    assert root["width"] > 600 and root["height"] > 10  # laid out, at the page's width
    assert abs(f1["width"] / root["width"] - 0.30) < 0.01
    assert f1["top"] < root["top"]  # callees above callers: the root is at the bottom
    assert by_name["p1 (a.py:1)"]["kind"] == "fg fg-python"
    assert "120.0 KiB copied, 30 pages, 30.00% of all copied bytes" in f1["title"]

    # A real click on f1 zooms into it: full width, its siblings hidden, reset offered.
    click(browser, session, f1["left"] + f1["width"] / 2, f1["top"] + f1["height"] / 2)
    import json

    zoomed = {b["name"]: b for b in json.loads(browser.evaluate(session, BARS_JS))}
    assert abs(zoomed["f1 (app)"]["width"] - root["width"]) < 2
    assert zoomed["all copies"]["shown"] and not zoomed["f2 (app)"]["shown"]
    assert not zoomed["[no stack]"]["shown"]
    assert browser.evaluate(session, "document.getElementById('flame-reset').hidden") is False
    browser.evaluate(session, "document.getElementById('flame-reset').click(), 1")
    reset = {b["name"]: b for b in json.loads(browser.evaluate(session, BARS_JS))}
    assert reset["f2 (app)"]["shown"] and abs(reset["f1 (app)"]["width"] - f1["width"]) < 1
    assert browser.problems(session) == []


def test_event_log_page_renders(browser: Chromium, tmp_path: Path) -> None:
    log = write_lines(tmp_path / "ev.jsonl", EVENTS)
    page = tmp_path / "events.html"
    page.write_text(render_html(load_report(str(log))))
    session, bars = open_report(browser, page)
    assert {b["name"] for b in bars} >= {
        "write_a (app)",
        "handle (app.py:42)",
        "gc_collect (app.py:9)",
    }
    tables = browser.evaluate(
        session,
        "Array.from(document.querySelectorAll('section')).map(function (s) { return s.id; })",
    )
    assert tables == [
        "totals",
        "flamegraph",
        "mappings",
        "allocations",
        "writers",
        "python-writers",
        "processes",
    ]


def test_page_without_attribution_renders(browser: Chromium, tmp_path: Path) -> None:
    """A summary from the core tracer alone: no flame graph, no script error, all processes."""
    page = tmp_path / "core.html"
    page.write_text(render_html(load_report(str(write_json(tmp_path / "s.json", core_summary())))))
    session, bars = open_report(browser, page, flame=False)
    assert bars == []
    rows = browser.evaluate(
        session,
        "Array.from(document.querySelectorAll('#processes tbody tr'))"
        ".map(function (r) { return r.cells[0].textContent; })",
    )
    assert rows == ["100", "101", "102"]
    missing = browser.evaluate(
        session,
        "Array.from(document.querySelectorAll('.missing'))"
        ".map(function (p) { return p.textContent; })",
    )
    assert len(missing) == 4 and missing[0].startswith("No writer stacks in this file")
