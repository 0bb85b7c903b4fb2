"""The terminal views' table style, shared by the member table and the Python writers pane:
a bold header with a rule under it, no edges, one space between columns."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table


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
