"""The report as one self-contained HTML page: inline CSS, script and SVG, nothing fetched.

A Content-Security-Policy of ``default-src 'none'`` (inline style and script allowed) makes the
browser itself refuse any network resource, so a page that renders is one that needs none: it
can be mailed, attached to a ticket or opened offline. Sections, top to bottom: totals, the
flame graph of copied bytes by writer stack, mappings, allocation sites, writer stacks, Python
writer stacks, processes, exit-time copies. Everything from the file is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import TypeVar

from cowtrace import __version__
from cowtrace.render.attribution import region_label
from cowtrace.render.format import count, human_bytes
from cowtrace.render.table import share
from cowtrace.render.types_pane import categories_text, pages_line
from cowtrace.report.assets import CSS, JS
from cowtrace.report.flame import NATIVE, PYTHON, SYNTHETIC, build_tree
from cowtrace.report.model import ProcessRow, ReportData
from cowtrace.report.svg import color, flame_svg
from cowtrace.report.text import describe_source
from cowtrace.results import (
    AllocationStat,
    PythonTypeStat,
    PythonWriterStat,
    RegionStat,
    WriterStat,
)

DEFAULT_TOP = 50
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
Row = TypeVar("Row")


def _share_cell(part: int, whole: int) -> str:
    pct = 100.0 * part / whole if whole > 0 else 0.0
    return (
        f'<td class="n">{share(part, whole)}</td>'
        f'<td class="share"><div style="width:{min(pct, 100.0):.2f}%"></div></td>'
    )


def _frames(frames: Sequence[str], css: str = "", truncated: bool = False) -> str:
    if not frames:
        return '<span class="cut">(no frames)</span>'
    cls = f' class="{css}"' if css else ""
    lines = [f"<span{cls}>{escape(f)}</span>" for f in frames]
    if truncated:
        lines.append('<span class="cut">… stack truncated (no frame pointers)</span>')
    return "<br>".join(lines)


def _missing(what: str, data: ReportData) -> str:
    why = (
        "this summary was written without attribution"
        if data.source == "summary"
        else "the log's lines have no such field"
    )
    return f'<p class="missing">No {escape(what)} in this file: {why}.</p>'


def _more(shown: int, total: int) -> str:
    if total <= shown:
        return ""
    return f'<p class="note">… {total - shown} more not shown (--top to show more).</p>'


def _head(columns: Sequence[tuple[str, bool]]) -> str:
    cells = "".join(
        f'<th class="n">{escape(h)}</th>' if numeric else f"<th>{escape(h)}</th>"
        for h, numeric in columns
    )
    return f"<thead><tr>{cells}</tr></thead>"


def _n(value: str) -> str:
    return f'<td class="n">{escape(value)}</td>'


def render_html(data: ReportData, top: int = DEFAULT_TOP) -> str:
    """The whole page as one string."""
    whole = data.totals.copied_bytes
    body = [
        "<header><h1>cowtrace report</h1>",
        f'<p class="sub">{escape(describe_source(data))}</p></header>',
        _cards(data),
    ]
    if data.why:
        body.append('<ul class="why">' + "".join(f"<li>{escape(w)}</li>" for w in data.why))
        body.append("</ul>")
    body += [
        _flame(data),
        *_sections(data, top, whole),
        _processes(data, whole),
        _exit(data, top),
        f"<footer>cowtrace {escape(__version__)} · report of {escape(data.path)}</footer>",
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cowtrace report: {escape(data.path)}</title>"
        f"<style>{CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<script>{JS}</script>\n</body></html>\n"
    )


def _cards(data: ReportData) -> str:
    t = data.totals
    cards = [
        ("copied", human_bytes(t.copied_bytes)),
        ("copies", count(t.copies)),
        ("file copies", count(t.file_copies)),
        ("get_user_pages copies", count(t.gup_copies)),
        ("reuses", count(t.reuses)),
        ("zero-fills", count(t.zero_fills)),
        ("processes", count(len(data.processes))),
    ]
    if t.lost_events is not None:
        cards.append(("lost detail events", count(t.lost_events)))
    exits = [p.exit.copies for p in data.processes if p.exit is not None]
    if exits:
        cards.append(("exit-time copies", count(sum(exits))))
    html = "".join(
        f'<div class="card">{escape(name)}<b>{escape(value)}</b></div>' for name, value in cards
    )
    note = ""
    if data.source == "events":
        note = (
            '<p class="note">Counted from the event log\'s lines: events lost to a full ring '
            "buffer are not in it (the summary's counts are exact).</p>"
        )
    return f'<section id="totals"><div class="cards">{html}</div>{note}</section>'


def _flame(data: ReportData) -> str:
    head = '<section id="flamegraph"><h2>Copied bytes by writer stack</h2>'
    tree = build_tree(data)
    if tree is None:
        return head + _missing("writer stacks", data) + "</section>"
    svg, dropped = flame_svg(tree)
    legend = "".join(
        f'<span style="background:{color("x", kind)}"></span>{label}'
        for kind, label in ((NATIVE, "native"), (PYTHON, "Python"), (SYNTHETIC, "no frame"))
    )
    notes = [
        "Root at the bottom, callers below callees; width is copied bytes. Python frames stand "
        "above the native function that made the write. Hover for numbers; click a bar to "
        "zoom into it."
    ]
    if tree.approximate:
        leaves = ", ".join(tree.approximate)
        notes.append(
            "This summary does not say which native stack each Python stack ran under; above "
            f"{leaves} the Python bytes are split in proportion to the native stacks' bytes "
            "(an --events log gives the exact picture)."
        )
    if tree.unplaced:
        notes.append(
            f"Python stacks of {human_bytes(tree.unplaced)} name a native leaf no native "
            "stack of this summary ends in: those copies are drawn under their native stacks "
            "only (an --events log gives the exact picture)."
        )
    if dropped:
        notes.append(f"{dropped} bars too thin to draw are left out.")
    return (
        head
        + f'<div class="flamebar"><span class="legend">{legend}</span>'
        + '<button id="flame-reset" type="button" hidden>reset zoom</button>'
        + '<div id="flame-info"></div></div>'
        + svg
        + "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
        + "</section>"
    )


@dataclass(frozen=True)
class _Section:
    """A ranked table section of the page: anchor, heading, the note when it has no rows, what
    the note on a section the file lacks names (None: say nothing, a section only some runs
    have), and its columns ((header, numeric); a share's bar is a column of its own)."""

    anchor: str
    heading: str
    empty: str
    missing: str | None
    columns: tuple[tuple[str, bool], ...]


_SHARE = (("share", True), ("", False))
_REGIONS = _Section(
    "mappings", "Copies by mapping", "No copies were resolved to a mapping.",
    "mapping attribution",
    (("mapping", False), ("kind", False), ("copies", True), ("copied", True), *_SHARE,
     ("reuses", True), ("zero-fills", True), ("processes", True)),
)  # fmt: skip
_ALLOCATIONS = _Section(
    "allocations", "Copies by allocation site", "No copies fell in a known allocation.",
    "allocation attribution",
    (("allocation site (innermost first)", False), ("origin", False), ("blocks", True),
     ("block bytes", True), ("copies", True), ("copied", True), *_SHARE,
     ("largest blocks", False)),
)  # fmt: skip
_WRITERS = _Section(
    "writers", "Top writer stacks", "No native writer stacks were captured.",
    "native writer stacks",
    (("writer stack (innermost first)", False), ("copies", True), ("copied", True), *_SHARE,
     ("processes", True)),
)  # fmt: skip
_PYTHON = _Section(
    "python-writers", "Top Python writer stacks", "No Python writer stacks were captured.", None,
    (("Python stack (innermost first)", False), ("native leaf", False), ("category", False),
     ("copies", True), ("copied", True), *_SHARE),
)  # fmt: skip
_TYPES = _Section(
    "python-types", "Copied objects by type",
    "No Python objects were on the copied pages examined.", None,
    (("type", False), ("objects", True), ("pages", True), ("copied", True), *_SHARE,
     ("by category", False)),
)  # fmt: skip


def _section(
    spec: _Section, rows: Sequence[Row] | None, cells: Callable[[Row], str], data: ReportData,
    top: int, note: str = "",
) -> str:  # fmt: skip
    """The section: its first ``top`` rows (``cells`` of each, one <tr>), "N more" when cut,
    then ``note`` (text) when the section is there."""
    head = f'<section id="{spec.anchor}"><h2>{spec.heading}</h2>'
    if rows is None:
        return "" if spec.missing is None else head + _missing(spec.missing, data) + "</section>"
    tail = f'<p class="note">{escape(note)}</p></section>' if note else "</section>"
    if not rows:
        return head + f'<p class="note">{spec.empty}</p>' + tail
    body = "".join(f"<tr>{cells(row)}</tr>" for row in rows[:top])
    table = f"<table>{_head(spec.columns)}<tbody>{body}</tbody></table>"
    return head + table + _more(top, len(rows)) + tail


def _td(text: str) -> str:
    return f"<td>{escape(text)}</td>"


def _sections(data: ReportData, top: int, whole: int) -> list[str]:
    """Mappings, allocation sites, writer stacks, Python writers and Python types."""

    def copied(copies: int, copied_bytes: int) -> str:
        """The copies, copied and share cells (with the share's bar)."""
        return _n(count(copies)) + _n(human_bytes(copied_bytes)) + _share_cell(copied_bytes, whole)

    def region(r: RegionStat) -> str:
        return (
            _td(region_label(r, report=True)) + _td(r.kind) + copied(r.copies, r.copied_bytes)
            + _n(count(r.reuses)) + _n(count(r.zero_fills)) + _n(count(r.processes))
        )  # fmt: skip

    def allocation(a: AllocationStat) -> str:
        site = _frames(a.site) if a.site else '<span class="cut">(site unknown)</span>'
        blocks = "<br>".join(
            f"{b.addr:#x}: {escape(human_bytes(b.size))}, {count(b.copied_pages)} pages copied"
            for b in a.largest
        )
        origin = a.origin + (f" ({a.allocator})" if a.allocator else "")
        return (
            f'<td class="frames">{site}</td>{_td(origin)}{_n(count(a.blocks))}'
            f"{_n(human_bytes(a.block_bytes))}{copied(a.copies, a.copied_bytes)}"
            f'<td class="frames">{blocks}</td>'
        )

    def writer(w: WriterStat) -> str:
        processes = "-" if w.processes is None else count(w.processes)
        stack = _frames(w.frames, truncated=w.truncated)
        return f'<td class="frames">{stack}</td>{copied(w.copies, w.copied_bytes)}{_n(processes)}'

    def python(p: PythonWriterStat) -> str:
        leaf = f'<td class="frames">{escape(p.native_leaf or "?")}</td>'
        stack = f'<td class="frames">{_frames(p.frames, "py")}</td>'
        return stack + leaf + _td(p.category or "-") + copied(p.copies, p.copied_bytes)

    def python_type(t: PythonTypeStat) -> str:
        objects = "-" if t.objects is None else count(t.objects)
        pages = "-" if t.pages is None else count(t.pages)
        share_ = _n(human_bytes(t.copied_bytes)) + _share_cell(t.copied_bytes, whole)
        return _td(t.type) + _n(objects) + _n(pages) + share_ + _td(categories_text(t.by_category))

    types_note = pages_line(data.python_pages) if data.python_pages else ""  # as the summary
    return [
        _section(_REGIONS, data.regions, region, data, top),
        _section(_ALLOCATIONS, data.allocations, allocation, data, top),
        _section(_WRITERS, data.writers, writer, data, top),
        _section(_PYTHON, data.python_writers, python, data, top),
        _section(_TYPES, data.python_types, python_type, data, top, types_note),
    ]


def _processes(data: ReportData, whole: int) -> str:
    """Every process, never capped: this is the table people check their workers against."""
    known = any(p.comm is not None for p in data.processes)
    exits = any(p.exit is not None for p in data.processes)
    columns: list[tuple[str, bool]] = [("pid", True)]
    if known:
        columns += [("ppid", True), ("role", False), ("comm", False)]
    columns += [("copies", True), ("copied", True), ("share", True), ("", False)]
    columns += [("reuses", True), ("zero-fills", True)]
    if exits:
        columns.append(("exit-time copies", True))
    if known:
        columns.append(("status", False))
    rows = []
    for p in data.processes:
        cells = _n(p.pid_label)
        if known:
            role = "worker" if p.role == "child" else (p.role or "?")
            ppid = "-" if p.ppid is None else str(p.ppid)
            cells += f"{_n(ppid)}<td>{escape(role)}</td><td>{escape(p.comm or '?')}</td>"
        cells += f"{_n(count(p.copies))}{_n(human_bytes(p.copied_bytes))}"
        cells += _share_cell(p.copied_bytes, whole)
        cells += f"{_n(count(p.reuses))}{_n(count(p.zero_fills))}"
        if exits:
            cells += _n("-" if p.exit is None else count(p.exit.copies))
        if known:
            cells += f"<td>{escape(p.status())}</td>"
        waste = ' class="waste"' if _exit_copies(p) else ""
        rows.append(f"<tr{waste}>{cells}</tr>")
    return (
        '<section id="processes"><h2>Processes</h2>'
        f"<table>{_head(columns)}<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _exit_copies(p: ProcessRow) -> int:
    return p.exit.copies if p.exit is not None else 0


def _exit(data: ReportData, top: int) -> str:
    flagged = sorted(
        (p for p in data.processes if _exit_copies(p)), key=lambda p: (-_exit_copies(p), p.pid)
    )
    if not flagged:
        return ""
    parts = [
        '<section id="exit-copies"><h2>Exit-time copies</h2>',
        '<p class="note">Copies made just before a process exited: the memory is released right '
        "after, so each one bought nothing.</p>",
    ]
    for p in flagged:
        who = f"pid {p.pid}" + (f" ({p.comm})" if p.comm else "")
        writers = p.exit.writers if p.exit is not None else ()
        parts.append(f"<h3>{escape(who)}: {count(_exit_copies(p))} copies</h3>")
        if writers:
            rows = "".join(
                f'<tr><td class="frames">{_frames(w.frames, truncated=w.truncated)}</td>'
                f"{_n(count(w.copies))}</tr>"
                for w in writers[:top]
            )
            parts.append(
                f"<table>{_head([('writer stack (innermost first)', False), ('copies', True)])}"
                f"<tbody>{rows}</tbody></table>"
            )
    parts.append("</section>")
    return "".join(parts)
