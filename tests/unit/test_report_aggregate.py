"""Event logs and summaries into report tables: exact answers derived in report_samples.py."""

from __future__ import annotations

from pathlib import Path

from cowtrace.render.attribution import region_label
from cowtrace.report.aggregate import aggregate_events
from cowtrace.report.load import load_report
from cowtrace.results import BlockStat
from tests.unit.report_samples import (
    CORE_EVENTS,
    EVAL,
    EVENTS,
    PY_GC,
    PY_HANDLE,
    SITE,
    WRITE_A,
    WRITE_B,
    core_summary,
    full_summary,
    write_json,
    write_lines,
)

PAGE = 4096


def test_event_log_totals_and_processes(tmp_path: Path) -> None:
    data = load_report(str(write_lines(tmp_path / "ev.jsonl", EVENTS)))
    assert data.source == "events"
    assert data.events == 9
    t = data.totals
    assert (t.copies, t.copied_bytes, t.reuses, t.zero_fills) == (7, 7 * PAGE, 1, 1)
    assert (t.file_copies, t.gup_copies, t.lost_events) == (2, 1, None)
    rows = [(p.pid, p.copies, p.copied_bytes, p.reuses, p.zero_fills) for p in data.processes]
    assert rows == [(11, 3, 3 * PAGE, 1, 0), (12, 3, 3 * PAGE, 0, 0), (10, 1, PAGE, 0, 1)]
    assert all(p.comm is None and p.exit is None for p in data.processes)
    assert data.duration_s is not None and abs(data.duration_s - 0.02) < 1e-9


def test_event_log_regions(tmp_path: Path) -> None:
    data = load_report(str(write_lines(tmp_path / "ev.jsonl", EVENTS)))
    assert data.regions is not None
    rows = [
        (r.kind, r.name, r.section, r.copies, r.reuses, r.zero_fills, r.processes)
        for r in data.regions
    ]
    assert rows == [
        ("heap", "[heap]", None, 3, 1, 0, 2),
        ("file", "/lib/x.so", ".bss", 2, 0, 0, 2),
        ("file", "/usr/bin/app", ".data", 1, 0, 0, 1),
        ("unknown", "", None, 1, 0, 0, 1),
        ("anon", "", None, 0, 0, 1, 0),
    ]
    assert [region_label(r, report=True) for r in data.regions] == [
        "[heap]",
        "/lib/x.so (.bss)",
        "/usr/bin/app (.data)",
        "unknown",
        "anonymous",
    ]


def test_event_log_allocations_count_distinct_pages(tmp_path: Path) -> None:
    data = load_report(str(write_lines(tmp_path / "ev.jsonl", EVENTS)))
    assert data.allocations is not None and len(data.allocations) == 1
    a = data.allocations[0]
    assert (list(a.site), a.origin, a.blocks, a.block_bytes) == (SITE, "malloc", 1, 0x3000)
    assert (a.copies, a.copied_bytes) == (3, 3 * PAGE)
    # Pages 0x1000 (twice: pids 11 and 12) and 0x2000: two distinct pages of the block.
    assert list(a.largest) == [BlockStat(addr=0x1000, size=0x3000, copied_pages=2)]


def test_event_log_writers_and_python_writers(tmp_path: Path) -> None:
    data = load_report(str(write_lines(tmp_path / "ev.jsonl", EVENTS)))
    assert data.writers is not None and data.python_writers is not None
    assert [(list(w.frames), w.copies, w.processes, w.truncated) for w in data.writers] == [
        (WRITE_A, 2, 1, False),
        ([EVAL], 1, 1, True),
        (WRITE_B, 1, 1, False),
    ]
    assert [(list(p.frames), p.native_leaf, p.copies) for p in data.python_writers] == [
        (PY_GC, None, 1),
        (PY_HANDLE, EVAL, 1),
    ]
    samples = {(s.native, s.python, s.truncated): s.copied_bytes for s in data.samples or []}
    assert samples == {
        (tuple(WRITE_A), None, False): 2 * PAGE,
        (tuple(WRITE_B), None, False): PAGE,
        (None, None, False): 2 * PAGE,  # events 4 and 7
        ((EVAL,), tuple(PY_HANDLE), True): PAGE,
        (None, tuple(PY_GC), False): PAGE,
    }


def test_core_event_log_has_no_attribution_sections(tmp_path: Path) -> None:
    data = load_report(str(write_lines(tmp_path / "core.jsonl", CORE_EVENTS)))
    assert (data.totals.copies, data.totals.reuses, data.totals.file_copies) == (2, 1, 1)
    assert data.regions is None and data.allocations is None
    assert data.writers is None and data.python_writers is None and data.samples is None
    assert [(p.pid, p.copies, p.reuses) for p in data.processes] == [
        (5, 1, 0),
        (6, 1, 1),
    ]  # ties by pid
    assert data.duration_s == 1.5


def test_aggregate_streams_any_iterable_and_skips_blank_lines() -> None:
    lines = ["\n", '{"pid": 1, "kind": "copy", "addr": 4096}\n', "   \n"] * 1000
    data = aggregate_events(iter(lines), "gen")
    assert data.totals.copies == 1000 and data.events == 1000


def test_core_summary(tmp_path: Path) -> None:
    data = load_report(str(write_json(tmp_path / "s.json", core_summary())))
    assert data.source == "summary"
    assert (data.root_pid, data.duration_s, data.end_reason) == (100, 4.5, "root exited")
    t = data.totals
    assert (t.copies, t.copied_bytes, t.reuses, t.zero_fills, t.lost_events) == (
        100,
        409600,
        7,
        2,
        0,
    )
    # Root first, then by copies.
    assert [p.pid for p in data.processes] == [100, 101, 102]
    assert [p.status() for p in data.processes] == ["exit 0", "exit 0", "running"]
    assert data.regions is None and data.allocations is None and data.writers is None
    assert all(p.exit is None for p in data.processes)


def test_full_summary_sections(tmp_path: Path) -> None:
    data = load_report(str(write_json(tmp_path / "s.json", full_summary())))
    assert data.regions is not None and [region_label(r, report=True) for r in data.regions] == [
        "[heap]",
        "/usr/bin/python3.11 (.data)",
    ]
    assert data.allocations is not None
    assert [(a.origin, a.blocks, a.copies) for a in data.allocations] == [
        ("malloc", 1, 50),
        ("recovered", 40, 4),
    ]
    assert list(data.allocations[0].largest) == [
        BlockStat(addr=0x7F0000000000, size=64 << 20, copied_pages=50)
    ]
    assert data.writers is not None and [w.copies for w in data.writers] == [30, 10, 5]
    assert data.python_writers is not None and len(data.python_writers) == 4
    worker = next(p for p in data.processes if p.pid == 101)
    assert worker.exit is not None and worker.exit.copies == 12
    assert [(list(w.frames), w.copies) for w in worker.exit.writers] == [
        (["free (libc.so.6)", "cleanup (app)"], 12)
    ]
    assert data.why == ["refcount writes (32% of copies) under p1 (a.py:1)"]


def test_one_line_summary_is_not_taken_for_an_event_log(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    import json

    path.write_text(json.dumps(core_summary()))
    assert load_report(str(path)).source == "summary"


def test_processes_may_be_a_list_of_pids(tmp_path: Path) -> None:
    summary = full_summary()
    summary["regions"][0]["processes"] = [101, 102, 103]
    summary["writers"][0]["processes"] = [101]
    data = load_report(str(write_json(tmp_path / "s.json", summary)))
    assert data.regions is not None and data.regions[0].processes == 3
    assert data.writers is not None and data.writers[0].processes == 1
