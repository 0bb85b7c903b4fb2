"""The "top Python writers" section: copies per Python stack of CPython members, and the "why"
lines derived from them.  One renderer for every output: the live pane (under the member
table), the end-of-run summary lines and `cowtrace report`'s table (report/text.py), from the
same PythonWriterStat rows."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from cowtrace.model import Snapshot
from cowtrace.render import format as fmt
from cowtrace.render.table import Ranked, frames_text, headed_table, report_section, share
from cowtrace.results import PythonWriterStat

PANE_ROWS = 5  # writers shown in the live view
CALLERS = 2  # Python frames shown per writer, innermost first
REPORT_TABLE = Ranked(
    "top Python writer stacks by copied bytes",
    [("Python stack (innermost first)", False), ("native leaf", False), ("category", False)]
    + [("copies", True), ("copied", True), ("share", True)],
    lines=True,
)


def _stack(frames: tuple[str, ...]) -> str:
    if not frames:
        return "(no Python frame)"
    shown = " ← ".join(frames[:CALLERS])
    return shown + (" ← …" if len(frames) > CALLERS else "")


def python_writers_pane(snapshot: Snapshot, rows: int = PANE_ROWS) -> RenderableType | None:
    """The pane, or None when no CPython member copied anything with a Python stack."""
    view = snapshot.attribution
    if view is None or not view.python_writers:
        return None
    table = headed_table(
        title="top Python writers",
        title_justify="left",
        title_style="bold",
    )
    table.add_column("copied", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("Python stack (innermost first)", overflow="ellipsis", no_wrap=True)
    table.add_column("native leaf", overflow="ellipsis", no_wrap=True)
    for stat in view.python_writers[:rows]:
        table.add_row(
            fmt.human_bytes(stat.copied_bytes), stat.category, _stack(stat.frames), stat.native_leaf
        )
    why = [Text(f"why: {line}", style="yellow") for line in view.why[:3]]
    return Group(table, *why)


def python_writers_lines(snapshot: Snapshot, rows: int = 10) -> list[str]:
    """The same as plain text lines, for the final summary."""
    view = snapshot.attribution
    if view is None or not view.python_writers:
        return []
    return [
        "top Python writers:",
        *(
            f"  {fmt.human_bytes(stat.copied_bytes):>9}  {stat.category:<9}  "
            f"{_stack(stat.frames)}  [{stat.native_leaf}]"
            for stat in view.python_writers[:rows]
        ),
        *(f"why: {line}" for line in view.why),
    ]


def python_writers_report(
    writers: Sequence[PythonWriterStat] | None, console: Console, top: int, whole: int
) -> None:
    """`cowtrace report`'s table; nothing when the file has no such section (Python stacks
    exist only for CPython members: no note when absent)."""

    def cells(p: PythonWriterStat) -> list[Text]:
        texts = [fmt.count(p.copies), fmt.human_bytes(p.copied_bytes)]
        texts.append(share(p.copied_bytes, whole))
        return [
            frames_text(p.frames),
            Text(p.native_leaf or "?"),
            Text(p.category or "-"),
            *(Text(t) for t in texts),
        ]

    report_section(console, REPORT_TABLE, writers, cells, top)
