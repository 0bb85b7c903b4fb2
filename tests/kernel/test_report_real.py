"""`cowtrace report` on what the real tracer wrote: the summary and the event log of one traced
fixture run give the same per-process numbers, and both render as text and as a page.

The exact answer here is the kernel's own counters: with no lost events, aggregating the event
log line by line must give, per process, exactly the copies, reuses and zero-fills the
summary took from the kernel's counter map.
"""

from __future__ import annotations

import re

from cowtrace.report.load import load_report
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import run_cowtrace
from tests.pprof_reader import read_pprof, stacks

build = load_build()


def test_report_of_a_traced_fixture(fixture_binaries, tmp_path) -> None:
    summary_path, events_path = tmp_path / "summary.json", tmp_path / "events.jsonl"
    traced = run_cowtrace(
        ["run", "--quiet", "--json", str(summary_path), "--events", str(events_path), "--"]
        + [str(fixture_binaries("workers")), *build.FIXTURES["workers"]]
    )
    assert traced.returncode == 0, traced.stderr
    facts = build.parse_lines(traced.stdout)

    summary, log = load_report(str(summary_path)), load_report(str(events_path))
    assert summary.totals.lost_events == 0
    numbers = lambda data: {  # noqa: E731
        p.pid: (p.copies, p.copied_bytes, p.reuses, p.zero_fills) for p in data.processes
    }
    from_summary = {pid: n for pid, n in numbers(summary).items() if n != (0, 0, 0, 0)}
    assert numbers(log) == from_summary
    t, u = summary.totals, log.totals
    assert (u.copies, u.reuses, u.zero_fills, u.file_copies, u.gup_copies) == (
        t.copies,
        t.reuses,
        t.zero_fills,
        t.file_copies,
        t.gup_copies,
    )
    assert set(facts.processes) <= {p.pid for p in summary.processes}

    text = run_cowtrace(["report", str(summary_path)])
    assert text.returncode == 0, text.stderr
    for p in summary.processes:
        assert re.search(rf"^\s*{p.pid}\s+\w+\s+\S+\s+{p.copies:,}\s", text.stdout, re.M), p

    page_path = tmp_path / "report.html"
    html = run_cowtrace(["report", str(events_path), "--html", str(page_path)])
    assert html.returncode == 0, html.stderr
    page = page_path.read_text()
    assert f"{log.events:,} events" in page
    # The workers' writes, with their writer stacks, are in the flame graph: the log's top
    # writer is a function of the fixture.  (Not "worker_main": at -O1 gcc inlines it, and the
    # fx_write_pages leaf, into `start`, its one caller.)
    assert "No writer stacks in this file" not in page
    leaf = next(w.frames[0] for w in log.writers or [] if w.frames)  # [no stack] may lead
    assert leaf.endswith(" (workers)") and leaf in page, leaf

    # The profiler formats carry the same bytes: the folded stacks of the log add up to its
    # copied bytes, and the pprof samples of the summary to its copies and copied bytes, read
    # back through profile.proto; the fixture's writer leaf is a function of its module.
    folded = run_cowtrace(["report", str(events_path), "--format", "folded"])
    assert folded.returncode == 0, folded.stderr
    weights = [int(line.rsplit(" ", 1)[1]) for line in folded.stdout.splitlines()]
    assert sum(weights) == log.totals.copied_bytes
    pprof_path = tmp_path / "copies.pb.gz"
    pprof = run_cowtrace(["report", str(summary_path), "-f", "pprof", "-o", str(pprof_path)])
    assert pprof.returncode == 0, pprof.stderr
    samples = stacks(read_pprof(pprof_path.read_bytes()))
    assert sum(values[0] for _, values in samples) == summary.totals.copies
    assert sum(values[1] for _, values in samples) == summary.totals.copied_bytes
    leaves = {(frames[0].function, frames[0].mapping) for frames, _ in samples}
    assert (leaf.removesuffix(" (workers)"), "workers") in leaves, leaves
