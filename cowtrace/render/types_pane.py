"""The "copied objects by type" pane: copied bytes of CPython members by the Python type of
the objects on the copied pages (cowtrace/python/copied_types.py), and the pages that held no
object.  Shown under the Python writers when there is anything to show."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cowtrace.model import Snapshot
from cowtrace.render import format as fmt

PANE_ROWS = 5  # types shown in the live view


def _categories(by_category: dict[str, int]) -> str:
    total = sum(by_category.values())
    parts = sorted(by_category.items(), key=lambda item: -item[1])
    return " ".join(f"{name} {100 * n // total}%" for name, n in parts if n) if total else "-"


def python_types_pane(snapshot: Snapshot, rows: int = PANE_ROWS) -> RenderableType | None:
    """ "copied objects by type": copied bytes of CPython members by the Python type of the
    objects on the copied pages (cowtrace/python/copied_types.py); None when there is none."""
    view = snapshot.attribution
    if view is None or not view.python_types:
        return None
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0, 0, 1),
        header_style="bold",
        title="copied objects by type",
        title_justify="left",
        title_style="bold",
    )
    table.add_column("copied", justify="right", no_wrap=True)
    table.add_column("objects", justify="right", no_wrap=True)
    table.add_column("type", overflow="ellipsis", no_wrap=True)
    table.add_column("by category", overflow="ellipsis", no_wrap=True)
    for stat in view.python_types[:rows]:
        table.add_row(
            fmt.human_bytes(stat.copied_bytes),
            f"{stat.objects:,}",
            stat.type,
            _categories(stat.by_category),
        )
    pages = view.python_pages
    if pages.get("no_object") or pages.get("not_resolved"):
        note = (
            f"pages with no Python object: {pages.get('no_object', 0):,}; "
            f"not resolved (no pool, no allocator block): {pages.get('not_resolved', 0):,}"
        )
        return Group(table, Text(note, style="dim"))
    return table


def python_types_lines(snapshot: Snapshot, rows: int = 10) -> list[str]:
    """The same as plain text lines, for the final summary."""
    view = snapshot.attribution
    if view is None or not view.python_types:
        return []
    lines = ["copied objects by type:"]
    for stat in view.python_types[:rows]:
        lines.append(
            f"  {fmt.human_bytes(stat.copied_bytes):>9}  {stat.objects:>9,}  {stat.type}  "
            f"[{_categories(stat.by_category)}]"
        )
    pages = view.python_pages
    lines.append(
        f"  pages: {pages.get('objects', 0):,} with objects, {pages.get('no_object', 0):,} "
        f"with none, {pages.get('not_resolved', 0):,} not resolved"
    )
    return lines
