"""`cowtrace report` end to end through the CLI: text, HTML, and bad input as one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cowtrace.cli import main
from tests.helpers import assert_one_line_error
from tests.unit.report_samples import (
    CORE_EVENTS,
    EVENTS,
    core_summary,
    full_summary,
    write_json,
    write_lines,
)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, r"no such file: .*missing\.json"),
        ("", r"is empty"),
        ("\n\n", r"is empty"),
        ("hello world\n", r"is not JSON \(line 1"),
        ("[1, 2]", r"not a cowtrace summary \(not an object\)"),
        ('{"root_pid": 1}', r'not a cowtrace summary \(no "schema"\)'),
        ('{"schema": 2, "totals": {}, "processes": []}', r"schema 2; this cowtrace reads schema 1"),
        ('{"schema": "1"}', r"schema '1'"),
        ('{"schema": 1, "processes": []}', r'no "totals"'),
        ('{"schema": 1, "totals": {}}', r'no "processes"'),
        ('{"schema": 1, "totals": {"copies": "many"}, "processes": []}', r"totals\.copies is not"),
        (
            '{"schema": 1, "totals": {}, "processes": [{"comm": "x"}]}',
            r"processes\[0\] has no 'pid'",
        ),
        (
            '{"schema": 1, "totals": {}, "processes": [], "writers": [{"frames": "f"}]}',
            r"writers\[0\]\.frames is not a list of strings",
        ),
        ('{"schema": 1, "totals": {}, "processes": [], "regions": 3}', r"summary\.regions is not"),
        (
            '{"pid": 1, "kind": "copy"}\n{"pid": 1, "kind": "copy"\n',
            r"ev\.json:2: not JSON: expected a cowtrace event line",
        ),
        ('{"pid": 1, "kind": "copy"}\n{"pid": 1, "kind": "steal"}\n', r":2: unknown kind 'steal'"),
        ('{"pid": 1, "kind": "copy"}\n[1]\n', r":2: not a JSON object"),
        ('{"pid": 1, "kind": "copy", "stack": "main"}\n', r":1: stack is not a list of strings"),
        ('{"pid": 1, "kind": "copy", "alloc": {"addr": 1}}\n', r":1: alloc has no integer"),
    ],
)
def test_bad_input_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, pattern: str
) -> None:
    path = tmp_path / ("missing.json" if content is None else "ev.json")
    if content is not None:
        path.write_text(content)
    code, out, err = run([str(path)], capsys)
    assert_one_line_error(code, err, pattern)
    assert out == ""


def test_binary_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    code, _, err = run([str(binary)], capsys)
    assert_one_line_error(code, err, r"is not text")
    code, _, err = run([str(tmp_path)], capsys)
    assert_one_line_error(code, err, r"is a directory")


def test_unwritable_html_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = write_json(tmp_path / "s.json", core_summary())
    code, _, err = run([str(summary), "--html", str(tmp_path / "no" / "r.html")], capsys)
    assert_one_line_error(code, err, r"cannot write .*r\.html: no such directory")


def test_text_report_of_core_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = write_json(tmp_path / "s.json", core_summary())
    code, out, err = run([str(summary)], capsys)
    assert code == 0 and err == ""
    assert "root 100, traced 4.50s, root exited" in out
    assert "totals: 100 copies (400.0 KiB), 3 file copies, 0 get_user_pages copies, 7 reuses" in out
    assert "0 lost detail events" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*10[012]\s", line)]
    assert rows == [
        ["100", "root", "master", "10", "40.0", "KiB", "10.0%", "0", "2", "exit", "0"],
        ["101", "worker", "worker", "60", "240.0", "KiB", "60.0%", "7", "0", "exit", "0"],
        ["102", "worker", "worker", "30", "120.0", "KiB", "30.0%", "0", "0", "running"],
    ]
    for section in ("mappings", "allocations", "writer stacks"):
        assert f"{section}: not in this file (run with attribution on)" in out


def test_text_report_of_full_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = write_json(tmp_path / "s.json", full_summary())
    code, out, _ = run([str(summary), "--top", "2"], capsys)
    assert code == 0
    assert "not in this file" not in out
    assert re.search(r"\[heap\]\s+heap\s+70\s+280\.0 KiB\s+70\.0%\s+5\s+0\s+2", out)
    assert re.search(r"load_model \(app\)", out)
    assert re.search(r"block 0x7f0000000000: 64\.0 MiB, 50 pages copied", out)
    assert re.search(r"leaf \(app\)\s+30\s+120\.0 KiB\s+30\.0%\s+1", out)
    assert "… 1 more (--top to show more)" in out  # 3 writers, top 2
    assert "… 2 more (--top to show more)" in out  # 4 Python writers, top 2
    assert "why: refcount writes (32% of copies) under p1 (a.py:1)" in out
    assert re.search(r"pid 101 \(worker\): 12 copies", out)
    assert re.search(r"12\s+free \(libc\.so\.6\) ← cleanup \(app\)", out)


def test_text_report_of_event_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_lines(tmp_path / "ev.jsonl", EVENTS)
    code, out, _ = run([str(log)], capsys)
    assert code == 0
    assert re.search(r"event log .*ev\.jsonl: 9 events, spanning 0\.02s", out)
    assert "totals: 7 copies (28.0 KiB), 2 file copies, 1 get_user_pages copies" in out
    assert re.search(r"/lib/x\.so \(\.bss\)\s+file\s+2\s", out)
    assert "comm" not in out  # an event log does not know process names


def test_text_report_of_core_event_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_lines(tmp_path / "core.jsonl", CORE_EVENTS)
    code, out, _ = run([str(log)], capsys)
    assert code == 0
    assert "mappings: not in this file (the log has no such field)" in out


def test_html_report_is_self_contained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = full_summary()
    summary["writers"][2]["frames"][0] = "<script>alert(1)</script> & co"
    out_path = tmp_path / "r.html"
    code, out, err = run(
        [str(write_json(tmp_path / "s.json", summary)), "--html", str(out_path)], capsys
    )
    assert code == 0 and out == ""
    assert err.strip() == f"cowtrace: wrote {out_path}"
    page = out_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page
    # Nothing to fetch: no src/href attributes, no URL but the SVG namespace name.
    assert not re.search(r"\b(src|href)\s*=", page)
    assert re.findall(r"https?://[^\s\"'<]+", page) == ["http://www.w3.org/2000/svg"]
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    for section in ("flamegraph", "mappings", "allocations", "writers", "python-writers"):
        assert f'id="{section}"' in page
    assert 'id="processes"' in page and 'id="exit-copies"' in page
    assert "split in proportion" in page  # the summary's approximate leaf is named
    bars = re.findall(r'<g class="fg fg-(\w+)"[^>]*data-n="([^"]*)"', page)
    assert ("synthetic", "all copies") in bars and ("python", "p1 (a.py:1)") in bars


def test_html_report_without_attribution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, page, _ = run(
        [str(write_json(tmp_path / "s.json", core_summary())), "--html", "-"], capsys
    )
    assert code == 0
    assert '<svg id="flame"' not in page
    assert "No writer stacks in this file: this summary was written without attribution." in page
    assert "No mapping attribution in this file" in page
    assert page.count("<tr") == 4  # header + 3 processes


def test_html_report_of_event_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_lines(tmp_path / "ev.jsonl", EVENTS)
    code, page, _ = run([str(log), "--html", "-"], capsys)
    assert code == 0
    assert page.count('<g class="fg ') == 11
    assert "split in proportion" not in page  # a log pairs stacks exactly
    assert "events lost to a full ring" in page


def test_report_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--help"]) == 0
    out = capsys.readouterr().out
    assert "cowtrace report summary.json --html report.html" in out
    assert "--top" in out


def test_summary_written_by_the_tracer_loads(tmp_path: Path) -> None:
    """The real writer's output (summary_dict on a Snapshot) is what report reads."""
    from cowtrace.model import Counts, Member, Role, Snapshot
    from cowtrace.output.summary import summary_dict
    from cowtrace.report.load import load_report

    member = Member(
        pid=7, ppid=1, comm="m", role=Role.ROOT, start_time=0.0, counts=Counts(copies=3)
    )
    snapshot = Snapshot(root_pid=7, started=0.0, now=1.0, members=[member], totals=Counts(copies=3))
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary_dict(snapshot)))
    data = load_report(str(path))
    assert data.totals.copied_bytes == 3 * 4096 and data.processes[0].comm == "m"


@pytest.mark.parametrize("kind", ["summary", "events"])
def test_report_reads_stdin(
    kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    text = (
        json.dumps(core_summary(), indent=2)
        if kind == "summary"
        else "\n" + "".join(json.dumps(e) + "\n" for e in EVENTS)
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code, out, err = run(["-"], capsys)
    assert code == 0, err
    expected = "summary stdin, root 100" if kind == "summary" else "event log stdin: 9 events"
    assert expected in out
