"""The live terminal view: a family header and one row per member, redrawn by the caller.

The caller owns the clock (it calls :meth:`LiveView.update` about once a second with a fresh
snapshot), so the view never refreshes on its own thread and never shows numbers older than
the last snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from rich.console import Console, Group, OverflowMethod, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from cowtrace.model import Member, Snapshot
from cowtrace.render import attribution as attr
from cowtrace.render import format as fmt
from cowtrace.render.python_pane import python_writers_pane
from cowtrace.render.table import headed_table
from cowtrace.render.types_pane import python_types_pane

WARNING = "bold yellow"
_SEPARATOR = ("  │  ", "dim")
_UNBOUNDED = 10_000
_TABLE_CHROME = 2  # the header row and the rule under it (box.SIMPLE_HEAD, no edges)
PANE_ROWS = 3  # entries per attribution pane in the live view


def member_table(
    snapshot: Snapshot,
    columns: Sequence[fmt.Column] = fmt.LIVE_COLUMNS,
    max_rows: int | None = None,
    *,
    truncate: bool = True,
) -> RenderableType:
    """The members in display order, at most ``max_rows`` lines including the cap line.

    Shared by the live view and the summary so both draw the same table; only the columns
    differ. With ``truncate`` a text cell that does not fit loses its tail to "…", so each
    member is exactly one line (the live view counts lines); without it, cells wrap and
    nothing is lost (the summary is a record).
    """
    members = fmt.ordered_members(snapshot.members, snapshot.root_pid)
    shown, hidden = members, []
    if max_rows is not None and len(members) > max_rows:
        keep = max(1, max_rows - 1)  # one line goes to "… N more members"
        shown, hidden = members[:keep], members[keep:]

    table = headed_table()
    overflow: OverflowMethod = "ellipsis" if truncate else "fold"
    for column in columns:
        # Text columns are the ones rich may narrow when the terminal is too small.
        table.add_column(
            column.header,
            justify="right" if column.numeric else "left",
            no_wrap=column.numeric,
            overflow=overflow,
        )
    for member in shown:
        cells = fmt.member_cells(columns, member, snapshot)
        table.add_row(
            *(Text(cell, no_wrap=truncate, overflow=overflow) for cell in cells),
            style=_row_style(member, snapshot),
        )
    if not hidden:
        return table
    return Group(table, Text(fmt.more_members_line(hidden), style="dim"))


def fitted_table(
    console: Console,
    snapshot: Snapshot,
    columns: Sequence[fmt.Column],
    droppable: Sequence[fmt.Column] = (),
    max_rows: int | None = None,
    *,
    truncate: bool = True,
) -> RenderableType:
    """:func:`member_table`, giving up ``droppable`` columns in order until it fits the width.

    Only when even that is not enough does rich narrow the text columns.
    """
    kept = list(columns)
    table = member_table(snapshot, kept, max_rows, truncate=truncate)
    for column in droppable:
        if fits(console, table):
            break
        kept.remove(column)
        table = member_table(snapshot, kept, max_rows, truncate=truncate)
    return table


def fits(console: Console, renderable: RenderableType) -> bool:
    """Whether ``renderable`` fits the console's width without narrowing anything."""
    unbounded = console.options.update_width(_UNBOUNDED)  # else rich clamps to the width
    return Measurement.get(console, unbounded, renderable).maximum <= console.width


def _row_style(member: Member, snapshot: Snapshot) -> str:
    """Root stands out, exited members fade: the eye goes to who is copying now."""
    if member.exited:
        return "dim"
    return "bold" if member.pid == snapshot.root_pid else ""


def header(snapshot: Snapshot, width: int) -> Text:
    """Who is traced and for how long, then the family's totals: two lines when they fit.

    Each item ("reuses 12") is kept whole and items are packed onto lines of ``width``, so a
    narrow terminal never splits a label from its number.
    """
    totals = snapshot.totals
    alive, exited = len(snapshot.alive), len(snapshot.exited)
    first = [
        Text.assemble(
            ("cowtrace", "bold"),
            "  root ",
            (str(snapshot.root_pid), "bold"),
            f" {fmt.root_comm(snapshot)}",
        ),
        Text(f"members {alive} alive, {exited} exited"),
        Text(f"elapsed {fmt.age(snapshot.duration)}"),
    ]
    second = [
        Text.assemble(
            "copied ",
            (fmt.human_bytes(totals.copied_bytes), "bold"),
            f" in {fmt.count(totals.copies)} copies",
        ),
        Text.assemble("rate ", (fmt.human_rate(snapshot.copy_rate), "bold")),
        Text(f"reuses {fmt.count(totals.reuses)}"),
        Text(f"zero-fills {fmt.count(totals.zero_fills)}"),
    ]
    if snapshot.lost_events > 0:
        lost = f"lost {fmt.count(snapshot.lost_events)} detail events (counts exact)"
        second.append(Text(lost, style=WARNING))
    return Text("\n").join([*_pack(first, width), *_pack(second, width)])


def attribution_panes(snapshot: Snapshot, top: int = PANE_ROWS) -> RenderableType | None:
    """Top mappings, allocations and writers, and exit-time copies flagged as waste; None
    when attribution is off or has nothing yet."""
    if not attr.has_data(snapshot.attribution):
        return None
    parts: list[RenderableType] = []
    for title, rows in attr.pane_rows(snapshot, top):
        waste = title.startswith("exit-time")
        parts.append(Text(title, style=WARNING if waste else "bold"))
        table = Table(
            box=None, show_header=False, pad_edge=False, padding=(0, 0, 0, 1), expand=True
        )
        table.add_column(justify="right", no_wrap=True, min_width=10)
        table.add_column(overflow="ellipsis", no_wrap=True, ratio=3)
        table.add_column(overflow="ellipsis", no_wrap=True, style="dim", ratio=2)
        for copied, label, detail in rows:  # Text: names like "[heap]" are not markup
            table.add_row(Text(copied), Text(label), Text(detail), style=WARNING if waste else "")
        parts.append(table)
    return Group(*parts)


def _pack(items: Sequence[Text], width: int) -> list[Text]:
    """Lay ``items`` out on as few lines of ``width`` as possible, separated by a bar."""
    separator = Text(_SEPARATOR[0], style=_SEPARATOR[1])
    lines = [items[0].copy()]
    for item in items[1:]:
        if lines[-1].cell_len + separator.cell_len + item.cell_len <= width:
            lines[-1].append_text(separator)
            lines[-1].append_text(item)
        else:
            lines.append(item.copy())
    return lines


class LiveView:
    """A rich live display of one family, used as a context manager around the trace loop.

    ``console`` is injectable so tests can record output; by default it writes to stdout.
    The display is transient by default because the final summary replaces it.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        transient: bool = True,
        screen: bool = False,
    ) -> None:
        self.console = console if console is not None else Console()
        self._live = Live(
            console=self.console,
            auto_refresh=False,
            transient=transient,
            screen=screen,
        )

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def update(self, snapshot: Snapshot) -> None:
        """Redraw now with ``snapshot``."""
        self._live.update(self.render(snapshot), refresh=True)

    def render(self, snapshot: Snapshot) -> RenderableType:
        """The whole view, with the member table cut to fit the terminal's height."""
        top = header(snapshot, self.console.width)
        used = len(self.console.render_lines(top, self.console.options, pad=False))
        panes = [
            pane
            for pane in (
                attribution_panes(snapshot),
                python_writers_pane(snapshot),
                python_types_pane(snapshot),
            )
            if pane is not None
        ]
        for pane in panes:  # +1: a blank line above each pane
            used += 1 + len(self.console.render_lines(pane, self.console.options, pad=False))
        # +1: a blank line between header and table
        max_rows = max(1, self.console.size.height - used - 1 - _TABLE_CHROME)
        table = fitted_table(self.console, snapshot, fmt.LIVE_COLUMNS, fmt.LIVE_DROPPABLE, max_rows)
        parts = [top, Text(""), table]
        for pane in panes:
            parts += [Text(""), pane]
        return Group(*parts)
