"""The "top Python writers" pane: copies per Python stack of CPython members, and the "why"
lines derived from them.  Shown under the member table when there is anything to show."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cowtrace.model import Snapshot
from cowtrace.render import format as fmt

PANE_ROWS = 5  # writers shown in the live view
CALLERS = 2  # Python frames shown per writer, innermost first


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
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0, 0, 1),
        header_style="bold",
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
    lines = ["top Python writers:"]
    for stat in view.python_writers[:rows]:
        lines.append(
            f"  {fmt.human_bytes(stat.copied_bytes):>9}  {stat.category:<9}  "
            f"{_stack(stat.frames)}  [{stat.native_leaf}]"
        )
    lines += [f"why: {line}" for line in view.why]
    return lines
