"""The summary printed once when tracing ends, for a terminal or as plain text.

This is what users paste into bug reports, so it states everything needed to trust it: why
tracing stopped, for how long, the exact totals, and whether any detail events were lost
(saying "0 lost" outright, since silence would leave the reader guessing), and what tracing
cost, so that the operator can show a reviewer the number.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from cowtrace.metrics.cost import BPF_STATS_ON, cost_figures
from cowtrace.model import Snapshot
from cowtrace.render import attribution as attr
from cowtrace.render import format as fmt
from cowtrace.render.live import WARNING, attribution_panes, fitted_table
from cowtrace.render.python_pane import python_writers_lines
from cowtrace.render.types_pane import python_types_lines

SUMMARY_TOP = 5  # attribution entries per pane in the final summary


def ending(snapshot: Snapshot) -> str:
    """``root 1234 (gunicorn), root exited after 1m02s``."""
    reason = snapshot.end_reason or "tracing ended"
    return (
        f"root {snapshot.root_pid} ({fmt.root_comm(snapshot)}),"
        f" {reason} after {fmt.age(snapshot.duration)}"
    )


def totals(snapshot: Snapshot) -> str:
    """The exact family totals, without the lost-events clause."""
    t = snapshot.totals
    return (
        f"{fmt.count(t.copies)} copies ({fmt.human_bytes(t.copied_bytes)}),"
        f" {fmt.count(t.file_copies)} file copies,"
        f" {fmt.count(t.reuses)} reuses,"
        f" {fmt.count(t.zero_fills)} zero-fills"
    )


def lost(snapshot: Snapshot) -> str:
    """Always present: the counts are exact either way, but the per-event detail may not be."""
    if snapshot.lost_events == 0:
        return "0 lost detail events"
    return (
        f"{fmt.count(snapshot.lost_events)} lost detail events"
        " (counts stay exact; per-event detail is incomplete)"
    )


def membership(snapshot: Snapshot) -> str:
    """``5 members (3 alive at end, 2 exited)``."""
    alive, exited = len(snapshot.alive), len(snapshot.exited)
    return f"{alive + exited} members ({alive} alive at end, {exited} exited)"


def _run_time(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e3:.1f} us"


def cost_lines(snapshot: Snapshot) -> list[str]:
    """Two lines on what tracing cost (the final snapshot of a session only):

    ``cost: 0.42 s CPU while tracing (0.35% of a core), 2.61 s in all; RSS 95.1 MiB (peak
    230.0 MiB); 1,234 events/s`` and ``BPF programs: 12.3 ms in 1,234,567 runs, 560 ns per
    event``, or how to have the kernel count the programs' time."""
    if snapshot.cost is None:
        return []
    t = snapshot.totals
    f = cost_figures(snapshot.cost, snapshot.duration, t.copies + t.reuses + t.zero_fills)
    share = "" if f.tracing_cpu_percent is None else f" ({f.tracing_cpu_percent:.2f}% of a core)"
    rate = "" if f.events_per_second is None else f"; {_events_rate(f.events_per_second)}"
    first = (
        f"cost: {f.tracing_cpu_s:.2f} s CPU while tracing{share}, {f.cpu_s:.2f} s in all;"
        f" RSS {fmt.human_bytes(f.rss_bytes)} (peak {fmt.human_bytes(f.peak_rss_bytes)}){rate}"
    )
    if f.bpf_run_ns is None:
        second = f"BPF programs: run time not counted ({BPF_STATS_ON} counts it)"
    else:
        second = f"BPF programs: {_run_time(f.bpf_run_ns)} in {fmt.count(f.bpf_runs or 0)} runs"
        if f.bpf_ns_per_event is not None:
            second += f", {f.bpf_ns_per_event:,.0f} ns per event"
        elif f.bpf_stats == "partial":
            second += " (kernel.bpf_stats_enabled changed while tracing: no per-event figure)"
    return [first, second]


def _events_rate(per_second: float) -> str:
    if per_second >= 10:
        return f"{fmt.count(round(per_second))} events/s"
    return f"{per_second:.1f} events/s"


def render_summary(snapshot: Snapshot, console: Console) -> None:
    """Print the final summary: header lines, then every member (never capped, never cut).

    On a narrow terminal, columns go (see :func:`fmt.summary_droppable`) before any cell is
    narrowed, and text cells wrap rather than lose their tail.
    """
    console.print(Text.assemble(("cowtrace summary: ", "bold"), ending(snapshot)))
    console.print(
        Text.assemble(
            "totals: ",
            totals(snapshot),
            ", ",
            (lost(snapshot), WARNING if snapshot.lost_events else "green"),
        )
    )
    console.print(membership(snapshot))
    for line in cost_lines(snapshot):
        console.print(line, highlight=False, markup=False)
    console.print()
    table = fitted_table(
        console, snapshot, fmt.SUMMARY_COLUMNS, fmt.summary_droppable(snapshot), truncate=False
    )
    console.print(table)
    panes = attribution_panes(snapshot, SUMMARY_TOP)
    if panes is not None:
        console.print()
        console.print(panes)
    for line in [*python_writers_lines(snapshot), *python_types_lines(snapshot)]:
        console.print(line, highlight=False, markup=False)


def summary_lines(snapshot: Snapshot) -> list[str]:
    """The same summary as plain text lines (no trailing newlines), for non-TTY output."""
    members = fmt.ordered_members(snapshot.members, snapshot.root_pid)
    rows = [fmt.member_cells(fmt.SUMMARY_COLUMNS, m, snapshot) for m in members]
    return [
        f"cowtrace summary: {ending(snapshot)}",
        f"totals: {totals(snapshot)}, {lost(snapshot)}",
        membership(snapshot),
        *cost_lines(snapshot),
        "",
        *fmt.text_table(fmt.SUMMARY_COLUMNS, rows),
        *(["", *extra] if (extra := attr.text_lines(snapshot, SUMMARY_TOP)) else []),
        *python_writers_lines(snapshot),
        *python_types_lines(snapshot),
    ]
