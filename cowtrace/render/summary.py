"""The summary printed once when tracing ends, for a terminal or as plain text.

This is what users paste into bug reports, so it states everything needed to trust it: why
tracing stopped, for how long, the exact totals, and whether any detail events were lost
(saying "0 lost" outright, since silence would leave the reader guessing).
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from cowtrace.model import Snapshot
from cowtrace.render import attribution as attr
from cowtrace.render import format as fmt
from cowtrace.render.live import WARNING, attribution_panes, fitted_table
from cowtrace.render.python_pane import python_writers_lines

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
    console.print()
    table = fitted_table(
        console, snapshot, fmt.SUMMARY_COLUMNS, fmt.summary_droppable(snapshot), truncate=False
    )
    console.print(table)
    panes = attribution_panes(snapshot, SUMMARY_TOP)
    if panes is not None:
        console.print()
        console.print(panes)
    for line in python_writers_lines(snapshot):
        console.print(line, highlight=False, markup=False)


def summary_lines(snapshot: Snapshot) -> list[str]:
    """The same summary as plain text lines (no trailing newlines), for non-TTY output."""
    members = fmt.ordered_members(snapshot.members, snapshot.root_pid)
    rows = [fmt.member_cells(fmt.SUMMARY_COLUMNS, m, snapshot) for m in members]
    return [
        f"cowtrace summary: {ending(snapshot)}",
        f"totals: {totals(snapshot)}, {lost(snapshot)}",
        membership(snapshot),
        "",
        *fmt.text_table(fmt.SUMMARY_COLUMNS, rows),
        *(["", *extra] if (extra := attr.text_lines(snapshot, SUMMARY_TOP)) else []),
        *python_writers_lines(snapshot),
    ]
