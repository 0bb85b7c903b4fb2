"""`cowtrace report --diff BEFORE AFTER` as text: the totals, then one table per breakdown.

Each table lists the items whose copied bytes changed, largest change first: before, after,
the change with its sign and in percent ("new" for what only the after run has).
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from cowtrace.render.format import count, human_bytes
from cowtrace.render.table import ranked_table
from cowtrace.render.types_pane import not_examined_change
from cowtrace.report.diff import DiffRow, DiffSection, RunDiff
from cowtrace.report.text import describe_source

DEFAULT_TOP = 10


def signed_bytes(n: int) -> str:
    """``+1.5 MiB``, ``-4.0 KiB``, ``0 B``."""
    if n == 0:
        return "0 B"
    return ("+" if n > 0 else "-") + human_bytes(abs(n))


def totals_line(diff: RunDiff) -> str:
    t = diff.totals
    copies_before, copies_after = diff.copies
    return (
        f"copied: {human_bytes(t.before)} → {human_bytes(t.after)} "
        f"({signed_bytes(t.change)}, {t.percent()}); "
        f"copies: {count(copies_before)} → {count(copies_after)} "
        f"({copies_after - copies_before:+,})"
    )


def render_diff(diff: RunDiff, console: Console, top: int = DEFAULT_TOP) -> None:
    console.print(Text.assemble(("cowtrace report --diff", "bold")))
    console.print(Text("before: " + describe_source(diff.before)))
    console.print(Text("after:  " + describe_source(diff.after)))
    console.print(Text(totals_line(diff)))
    for section in diff.sections:
        console.print()
        _section(console, section, top)
        if section.not_examined is not None:
            console.print(Text(not_examined_change(*section.not_examined), style="dim"))


def _section(console: Console, section: DiffSection, top: int) -> None:
    if section.missing:
        which = " and ".join(section.missing)
        console.print(Text(f"by {section.title}: not in the {which} file", style="dim"))
        return
    if not section.rows:
        console.print(Text(f"by {section.title}: no change ({section.unchanged} the same)"))
        return
    grew, shrank = len(section.grew), len(section.shrank)
    title = f"by {section.title}: {grew} grew, {shrank} shrank, {section.unchanged} the same"
    roles = any(r.processes is not None for r in section.rows)
    columns = [(section.title, False)]
    if roles:
        columns.append(("processes", True))
    columns += [("before", True), ("after", True), ("change", True), ("change %", True)]
    table = ranked_table(title, columns, lines=any(r.frames for r in section.rows[:top]))
    for row in section.rows[:top]:
        table.add_row(*_cells(row, roles))
    console.print(table)
    if len(section.rows) > top:
        more = len(section.rows) - top
        console.print(Text(f"… {more} more changed (--top to show more)", style="dim"))


def _cells(row: DiffRow, roles: bool) -> list[Text]:
    cells = [Text("\n".join(row.frames) if row.frames else row.label)]
    if roles:
        before, after = row.processes or (0, 0)
        cells.append(Text(f"{before} → {after}"))
    style = "red" if row.change > 0 else "green"
    cells += [Text(human_bytes(row.before)), Text(human_bytes(row.after))]
    cells += [Text(signed_bytes(row.change), style=style), Text(row.percent(), style=style)]
    return cells
