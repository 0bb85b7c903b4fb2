"""The table styles of every text output, and the cells they share.

`headed_table`: the terminal views' style (the member table, the Python panes): a bold header
with a rule under it, no edges, one space between columns.  `ranked_table`: `cowtrace
report`'s ranked tables, whose frames and paths fold and whose numbers never wrap.  A section
renderer (render/attribution.py, python_pane.py, types_pane.py) uses one of them for whichever
output it draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Row = TypeVar("Row")


def headed_table(**options: Any) -> Table:
    """An empty table in that style; ``options`` add to rich's (a title, say)."""
    return Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0, 0, 1),
        header_style="bold",
        **options,
    )


def ranked_table(title: str, columns: Sequence[tuple[str, bool]], lines: bool = False) -> Table:
    """A report table: ``columns`` are (header, numeric); ``lines`` rules between rows (for
    cells of many lines, such as stacks)."""
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, show_lines=lines
    )
    for header, numeric in columns:
        # Numbers never wrap (a folded "592.0 / KiB" misreads); frames and paths fold instead.
        table.add_column(
            header,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=numeric,
            min_width=None if numeric else min(len(header), 8),
        )
    return table


def share(part: int, whole: int) -> str:
    """``42.0%`` of all copied bytes; ``-`` when nothing was copied."""
    return f"{100.0 * part / whole:.1f}%" if whole > 0 else "-"


def frames_text(frames: Sequence[str], truncated: bool = False) -> Text:
    """Innermost frame first, one per line; an unfinished walk says so on its last line."""
    text = Text("\n".join(frames) if frames else "(no frames)")
    if truncated:
        text.append("\n… stack truncated (no frame pointers)", style="dim")
    return text


def more(console: Console, shown: int, total: int) -> None:
    """``… 12 more (--top to show more)`` under a report table cut at ``shown`` rows."""
    if total > shown:
        console.print(Text(f"… {total - shown} more (--top to show more)", style="dim"))


def missing(console: Console, what: str, source: str) -> None:
    """A report section the file does not carry, and why (``source``: "summary" or
    "events")."""
    hint = "run with attribution on" if source == "summary" else "the log has no such field"
    console.print(Text(f"{what}: not in this file ({hint})", style="dim"))


@dataclass(frozen=True)
class Ranked:
    """One ranked section of the text report: its title, columns ((header, numeric)), rules
    between rows (cells of many lines, such as stacks), and ``what`` the note names when the
    file lacks the section (None: say nothing, a section only some runs have)."""

    title: str
    columns: Sequence[tuple[str, bool]]
    lines: bool = False
    what: str | None = None


def report_section(
    console: Console,
    section: Ranked,
    rows: Sequence[Row] | None,
    cells: Callable[[Row], Sequence[Text]],
    top: int,
    source: str = "summary",
) -> None:
    """After a blank line, the first ``top`` rows (``cells`` of each) and how many more, or
    ``TITLE: none``; ``rows`` None: the file does not carry the section (`missing`)."""
    if rows is None:
        if section.what is not None:
            console.print()
            missing(console, section.what, source)
        return
    console.print()
    table = ranked_table(section.title, section.columns, section.lines)
    for row in rows[:top]:
        table.add_row(*cells(row))
    none = f"{section.title.removesuffix(' by copied bytes')}: none"
    console.print(table if rows else Text(none))
    more(console, top, len(rows))
