"""The "copied objects by type" section: copied bytes of CPython members by the Python type of
the objects on the copied pages (cowtrace/python/copied_types.py), the pages that held no
object, and the pages not examined, over the resolution's time budget (python/budget.py): the
types' figures leave those out, so wherever they are shown that count is too.  One renderer
for every output: the live pane, the end-of-run summary lines, `cowtrace report`'s table
(report/text.py) and page (report/html.py) from the same PythonTypeStat rows, and the pages
line (`pages_line`) wherever the pages are shown with them, `report --diff` too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from cowtrace.model import Snapshot
from cowtrace.render import format as fmt
from cowtrace.render.table import Ranked, headed_table, report_section, share
from cowtrace.results import OVER_BUDGET, PythonTypeStat

PANE_ROWS = 5  # types shown in the live view
REPORT_TABLE = Ranked(
    "copied objects by type",
    [("type", False), ("objects", True), ("pages", True), ("copied", True), ("share", True)]
    + [("by category", False)],
)


def categories_text(by_category: dict[str, int], *, brief: bool = False) -> str:
    """A type's copied bytes by the writers' category: ``refcount 80.0%, gc 20.0%`` (the
    report), or with ``brief`` ``refcount 80% gc 20%`` (the live pane and the summary)."""
    total = sum(by_category.values())
    parts = sorted(by_category.items(), key=lambda item: -item[1])
    if brief:
        return " ".join(f"{name} {100 * n // total}%" for name, n in parts if n) if total else "-"
    return ", ".join(f"{name} {share(n, total)}" for name, n in parts if n) or "-"


NOT_EXAMINED = "not examined (over the time budget)"  # what the pages over budget are called


def over_budget(pages: Mapping[str, int] | None) -> int:
    """Copied pages left unexamined for types (over the time budget), from a view's or a
    loaded summary's `python_pages` (None or without the count: a file from before the budget,
    where every page was examined)."""
    return (pages or {}).get(OVER_BUDGET, 0)


def pages_line(pages: Mapping[str, int]) -> str:
    """The copied pages of CPython members by class (a summary's `python_pages`): ``pages: 3
    with objects, 0 with none, 0 not resolved, 7 not examined (over the time budget)``; the
    last only when some were, since the types' figures then leave those pages out."""
    skipped = over_budget(pages)
    return (
        f"pages: {pages.get('objects', 0):,} with objects, {pages.get('no_object', 0):,} "
        f"with none, {pages.get('not_resolved', 0):,} not resolved"
        + (f", {skipped:,} {NOT_EXAMINED}" if skipped else "")
    )


def not_examined_change(before: int, after: int) -> str:
    """`report --diff`'s note under the types: their bytes changed partly because fewer or
    more pages were examined, not only because the workers copied other objects."""
    return f"pages {NOT_EXAMINED}: {before:,} → {after:,}"


def python_types_pane(snapshot: Snapshot, rows: int = PANE_ROWS) -> RenderableType | None:
    """ "copied objects by type": copied bytes of CPython members by the Python type of the
    objects on the copied pages (cowtrace/python/copied_types.py); None when there is none
    and no page was left unexamined."""
    view = snapshot.attribution
    if view is None:
        return None
    skipped = over_budget(view.python_pages)
    if not view.python_types and not skipped:
        return None
    table = headed_table(title="copied objects by type", title_justify="left", title_style="bold")
    table.add_column("copied", justify="right", no_wrap=True)
    table.add_column("objects", justify="right", no_wrap=True)
    table.add_column("type", overflow="ellipsis", no_wrap=True)
    table.add_column("by category", overflow="ellipsis", no_wrap=True)
    for stat in view.python_types[:rows]:
        table.add_row(
            fmt.human_bytes(stat.copied_bytes),
            f"{stat.objects:,}",
            stat.type,
            categories_text(stat.by_category, brief=True),
        )
    pages = view.python_pages
    notes: list[RenderableType] = []
    if pages.get("no_object") or pages.get("not_resolved"):
        note = (
            f"pages with no Python object: {pages.get('no_object', 0):,}; "
            f"not resolved (no pool, no allocator block): {pages.get('not_resolved', 0):,}"
        )
        notes.append(Text(note, style="dim"))
    if skipped:
        note = f"pages not examined, over the time budget (--python-types-budget): {skipped:,}"
        notes.append(Text(note, style="dim"))
    return Group(table, *notes) if notes else table


def python_types_lines(snapshot: Snapshot, rows: int = 10) -> list[str]:
    """The same as plain text lines, for the final summary."""
    view = snapshot.attribution
    if view is None:
        return []
    skipped = over_budget(view.python_pages)
    if not view.python_types and not skipped:
        return []
    return [
        "copied objects by type:",
        *(
            f"  {fmt.human_bytes(stat.copied_bytes):>9}  {stat.objects:>9,}  {stat.type}  "
            f"[{categories_text(stat.by_category, brief=True)}]"
            for stat in view.python_types[:rows]
        ),
        "  " + pages_line(view.python_pages),
    ]


def python_types_report(
    types: Sequence[PythonTypeStat] | None,
    pages: Mapping[str, int] | None,
    console: Console,
    top: int,
    whole: int,
) -> None:
    """`cowtrace report`'s table and, when the file has them, the pages by class under it (as
    the summary lines have); nothing when the file has no such section (only CPython members
    have one, as the writer stacks)."""

    def cells(t: PythonTypeStat) -> list[Text]:
        return [
            Text(t.type),
            Text("-" if t.objects is None else fmt.count(t.objects)),
            Text("-" if t.pages is None else fmt.count(t.pages)),
            Text(fmt.human_bytes(t.copied_bytes)),
            Text(share(t.copied_bytes, whole)),
            Text(categories_text(t.by_category)),
        ]

    report_section(console, REPORT_TABLE, types, cells, top)
    if types is not None and pages:
        console.print(Text(pages_line(pages), style="dim"))
