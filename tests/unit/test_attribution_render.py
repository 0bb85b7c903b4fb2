"""Attribution in the renderers and the --json summary, on a synthetic view."""

from __future__ import annotations

import dataclasses
import io
import json

from rich.console import Console

from cowtrace.model import Counts, ExitStatus, Member, Role, Snapshot
from cowtrace.output.summary import summary_dict
from cowtrace.render import LiveView, PlainReporter, render_summary, summary_lines
from cowtrace.render import attribution as attr
from cowtrace.results import (
    AllocationStat,
    AttributionView,
    BlockStat,
    ProcessExit,
    RegionStat,
    WriterStat,
)

VIEW = AttributionView(
    regions=(
        RegionStat("heap", "[heap]", None, copies=1000, reuses=2, zero_fills=0, processes=2),
        RegionStat(
            "file", "/usr/bin/python3", ".data", copies=10, reuses=0, zero_fills=0, processes=1
        ),  # fmt: skip
    ),
    allocations=(
        AllocationStat(
            site=("load_model (app)", "main (app)"),
            origin="malloc",
            allocator="glibc",
            blocks=1,
            block_bytes=64 << 20,
            copies=900,
            largest=(BlockStat(addr=0x1000, size=64 << 20, copied_pages=900),),
        ),
    ),
    writers=(WriterStat(frames=("free (libc.so.6)",), copies=950, processes=2, truncated=True),),
    exit_copies={201: 950},
)


def snapshot(view: AttributionView | None = VIEW) -> Snapshot:
    members = [
        Member(pid=200, ppid=1, comm="master", role=Role.ROOT, start_time=0.0),
        Member(
            pid=201,
            ppid=200,
            comm="worker",
            role=Role.CHILD,
            start_time=1.0,
            exit_time=5.0,
            exit_status=ExitStatus(code=0),
            counts=Counts(copies=1010),
        ),
    ]
    return Snapshot(
        root_pid=200,
        started=0.0,
        now=10.0,
        members=members,
        totals=Counts(copies=1010),
        ended=True,
        end_reason="root exited",
        attribution=view,
    )


def test_labels() -> None:
    assert attr.region_label(VIEW.regions[1]) == "/usr/bin/python3 .data"
    assert attr.stack_label(("a (m)", "b (m)", "c (m)", "d (m)"), False) == (
        "a (m) < b (m) < c (m) < … 1 more"
    )
    assert attr.stack_label(("free (libc.so.6)",), True) == (
        "free (libc.so.6) [truncated: no frame pointers]"
    )
    assert attr.stack_label((), True) == "(stack unavailable: no frame pointers)"


def test_live_view_shows_panes_only_with_data() -> None:
    console = Console(file=io.StringIO(), width=140, height=40, record=True)
    view = LiveView(console=console)
    console.print(view.render(snapshot()))
    text = console.export_text()
    for expected in ("top mappings", "[heap]", "top allocations", "load_model (app)",
                     "top writers", "exit-time copies (waste", "pid 201 worker",
                     "free (libc.so.6) [truncated: no frame pointers]"):  # fmt: skip
        assert expected in text
    console = Console(file=io.StringIO(), width=140, height=40, record=True)
    console.print(LiveView(console=console).render(snapshot(None)))
    assert "top mappings" not in console.export_text()


def test_final_summary_lists_the_top_entries() -> None:
    console = Console(file=io.StringIO(), width=160, record=True)
    render_summary(snapshot(), console)
    assert "top writers" in console.export_text()
    lines = summary_lines(snapshot())
    assert "top mappings:" in lines
    assert any("/usr/bin/python3 .data" in line for line in lines)
    assert summary_lines(snapshot(None))[-1] != ""


def test_plain_lines_when_changed() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out, clock=lambda: 0.0)
    reporter.update(snapshot())
    reporter.update(snapshot())
    lines = out.getvalue().splitlines()
    tops = [line for line in lines if line.startswith("  top ")]
    assert len(tops) == 4  # 2 mappings, 1 allocation, 1 writer, once: unchanged the 2nd time
    assert "  top mapping=[heap] copies=1000 copied_bytes=4096000 processes=2" in lines
    assert "  exit_copies pid=201 comm=worker copies=950 waste=yes" in lines


def test_json_summary_gains_sections_and_process_fields() -> None:
    """The engine's final view (with `exits`) adds the sections and the per-process fields;
    a live view (no `exits`) adds neither."""
    final = dataclasses.replace(VIEW, exits={201: ProcessExit(950)})
    data = json.loads(json.dumps(summary_dict(snapshot(final))))
    assert [r["name"] for r in data["regions"]] == ["[heap]", "/usr/bin/python3"]
    assert [w["frames"] for w in data["writers"]] == [["free (libc.so.6)"]]
    assert [a["site"] for a in data["allocations"]] == [["load_model (app)", "main (app)"]]
    assert [p["exit_copies"] for p in data["processes"]] == [0, 950]
    assert [p["exit_writers"] for p in data["processes"]] == [[], []]
    plain = summary_dict(snapshot())
    assert "regions" not in plain and "exit_copies" not in plain["processes"][0]


def test_copies_the_kernel_retried_are_summed_and_in_the_summary() -> None:
    """wp_retries add up like the outcomes and sit beside them, in totals and per process:
    copies + zero_fills + wp_retries is what delay accounting counts."""
    master, worker = Counts(copies=3, zero_fills=1, wp_retries=2), Counts(copies=5, wp_retries=1)
    assert master + worker == Counts(copies=8, zero_fills=1, wp_retries=3)
    base = snapshot(None)
    counts = (master, worker)
    members = [dataclasses.replace(m, counts=c) for m, c in zip(base.members, counts, strict=True)]
    data = summary_dict(dataclasses.replace(base, members=members, totals=master + worker))
    assert data["totals"]["wp_retries"] == 3
    assert [p["wp_retries"] for p in data["processes"]] == [2, 1]
    assert [p["copies"] + p["zero_fills"] + p["wp_retries"] for p in data["processes"]] == [6, 6]
