"""The text report: totals, processes, then the top mappings, allocations and writers (rich).

Every section the file lacks is named with why ("not in this file"), because an empty table
would read as "nothing was copied there". Frame names and paths are user data: they go into
``Text`` objects, never markup, so a ``[heap]`` or ``[anon:x]`` is printed as is.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cowtrace.render import attribution as attr
from cowtrace.render.format import count, human_bytes
from cowtrace.render.python_pane import python_writers_report
from cowtrace.render.table import ranked_table, share
from cowtrace.render.types_pane import python_types_report
from cowtrace.report.model import ProcessRow, ReportData

DEFAULT_TOP = 10


def describe_source(data: ReportData) -> str:
    """One line on what the file is and what it covers."""
    if data.source == "events":
        span = f", spanning {data.duration_s:.2f}s" if data.duration_s is not None else ""
        return f"event log {data.path}: {count(data.events or 0)} events{span}"
    parts = [f"summary {data.path}"]
    if data.root_pid is not None:
        parts.append(f"root {data.root_pid}")
    if data.duration_s is not None:
        parts.append(f"traced {data.duration_s:.2f}s")
    if data.end_reason:
        parts.append(data.end_reason)
    return ", ".join(parts)


def totals_line(data: ReportData) -> str:
    t = data.totals
    line = (
        f"{count(t.copies)} copies ({human_bytes(t.copied_bytes)}), "
        f"{count(t.file_copies)} file copies, {count(t.gup_copies)} get_user_pages copies, "
        f"{count(t.reuses)} reuses, {count(t.zero_fills)} zero-fills"
    )
    if t.lost_events is not None:
        line += f", {count(t.lost_events)} lost detail events"
    return line


def process_table(processes: Sequence[ProcessRow], total_bytes: int) -> Table:
    """Columns a file cannot fill (comm from an event log, exit copies before attribution)
    are left out rather than shown as a column of question marks."""
    known = any(p.comm is not None for p in processes)
    exits = any(p.exit is not None for p in processes)
    columns: list[tuple[str, bool]] = [("pid", True)]
    if known:
        columns += [("role", False), ("comm", False)]
    columns += [("copies", True), ("copied", True), ("share", True), ("reuses", True)]
    columns += [("zero-fills", True)]
    if exits:
        columns.append(("exit copies", True))
    if known:
        columns.append(("status", False))
    table = ranked_table("processes", columns)
    for p in processes:
        row = [p.pid_label]
        if known:
            row += ["worker" if p.role == "child" else (p.role or "?"), p.comm or "?"]
        row += [
            count(p.copies),
            human_bytes(p.copied_bytes),
            share(p.copied_bytes, total_bytes),
            count(p.reuses),
            count(p.zero_fills),
        ]
        if exits:
            row.append("-" if p.exit is None else count(p.exit.copies))
        if known:
            row.append(p.status())
        table.add_row(*(Text(cell) for cell in row))
    return table


def render_text(data: ReportData, console: Console, top: int = DEFAULT_TOP) -> None:
    """Print the whole report; ``top`` caps the rows of each ranked table."""
    whole = data.totals.copied_bytes
    console.print(Text.assemble(("cowtrace report: ", "bold"), describe_source(data)))
    console.print(Text("totals: " + totals_line(data)))
    if data.source == "events":
        console.print(
            Text("(counted from the log's lines: events lost to a full ring are not in it)", "dim")
        )
    for line in data.why or []:
        console.print(Text("why: " + line, style="yellow"))
    console.print()
    console.print(process_table(data.processes, whole))
    attr.regions_report(data.regions, console, top, whole, data.source)
    attr.allocations_report(data.allocations, console, top, whole, data.source)
    attr.writers_report(data.writers, console, top, whole, data.source)
    python_writers_report(data.python_writers, console, top, whole)
    python_types_report(data.python_types, data.python_pages, console, top, whole)
    exits = [(p.pid, p.comm, p.exit) for p in data.processes if p.exit and p.exit.copies]
    attr.exits_report(exits, console, top)
