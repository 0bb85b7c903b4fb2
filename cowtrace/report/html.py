"""The report as one self-contained HTML page: inline CSS, script and SVG, nothing fetched.

A Content-Security-Policy of ``default-src 'none'`` (inline style and script allowed) makes the
browser itself refuse any network resource, so a page that renders is one that needs none: it
can be mailed, attached to a ticket or opened offline. Sections, top to bottom: totals, the
flame graph of copied bytes by writer stack, mappings, allocation sites, writer stacks, Python
writer stacks, processes, exit-time copies. Everything from the file is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from cowtrace import __version__
from cowtrace.render.attribution import region_label
from cowtrace.render.format import count, human_bytes
from cowtrace.render.table import share
from cowtrace.render.types_pane import categories_text
from cowtrace.report.assets import CSS, JS
from cowtrace.report.flame import NATIVE, PYTHON, SYNTHETIC, build_tree
from cowtrace.report.model import ProcessRow, ReportData
from cowtrace.report.svg import color, flame_svg
from cowtrace.report.text import describe_source

DEFAULT_TOP = 50
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


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
        _regions(data, top, whole),
        _allocations(data, top, whole),
        _writers(data, top, whole),
        _python(data, top, whole),
        _types(data, top, whole),
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


def _regions(data: ReportData, top: int, whole: int) -> str:
    head = '<section id="mappings"><h2>Copies by mapping</h2>'
    if data.regions is None:
        return head + _missing("mapping attribution", data) + "</section>"
    if not data.regions:
        return head + '<p class="note">No copies were resolved to a mapping.</p></section>'
    columns = [("mapping", False), ("kind", False), ("copies", True), ("copied", True)]
    columns += [("share", True), ("", False), ("reuses", True), ("zero-fills", True)]
    columns += [("processes", True)]
    rows = [
        f"<tr><td>{escape(region_label(r, report=True))}</td><td>{escape(r.kind)}</td>"
        f"{_n(count(r.copies))}"
        f"{_n(human_bytes(r.copied_bytes))}{_share_cell(r.copied_bytes, whole)}"
        f"{_n(count(r.reuses))}{_n(count(r.zero_fills))}{_n(count(r.processes))}</tr>"
        for r in data.regions[:top]
    ]
    return _table_section(head, columns, rows, top, len(data.regions))


def _table_section(
    head: str, columns: list[tuple[str, bool]], rows: list[str], top: int, total: int
) -> str:
    """The end every table section shares: the table, "N more" when cut, the close."""
    return (
        head
        + f"<table>{_head(columns)}<tbody>{''.join(rows)}</tbody></table>"
        + _more(top, total)
        + "</section>"
    )


def _allocations(data: ReportData, top: int, whole: int) -> str:
    head = '<section id="allocations"><h2>Copies by allocation site</h2>'
    if data.allocations is None:
        return head + _missing("allocation attribution", data) + "</section>"
    if not data.allocations:
        return head + '<p class="note">No copies fell in a known allocation.</p></section>'
    columns = [("allocation site (innermost first)", False), ("origin", False)]
    columns += [("blocks", True), ("block bytes", True), ("copies", True), ("copied", True)]
    columns += [("share", True), ("", False), ("largest blocks", False)]
    rows = []
    for a in data.allocations[:top]:
        site = _frames(a.site) if a.site else '<span class="cut">(site unknown)</span>'
        origin = a.origin + (f" ({a.allocator})" if a.allocator else "")
        blocks = "<br>".join(
            f"{b.addr:#x}: {escape(human_bytes(b.size))}, {count(b.copied_pages)} pages copied"
            for b in a.largest
        )
        rows.append(
            f'<tr><td class="frames">{site}</td><td>{escape(origin)}</td>'
            f"{_n(count(a.blocks))}{_n(human_bytes(a.block_bytes))}{_n(count(a.copies))}"
            f"{_n(human_bytes(a.copied_bytes))}{_share_cell(a.copied_bytes, whole)}"
            f'<td class="frames">{blocks}</td></tr>'
        )
    return _table_section(head, columns, rows, top, len(data.allocations))


def _writers(data: ReportData, top: int, whole: int) -> str:
    head = '<section id="writers"><h2>Top writer stacks</h2>'
    if data.writers is None:
        return head + _missing("native writer stacks", data) + "</section>"
    if not data.writers:
        return head + '<p class="note">No native writer stacks were captured.</p></section>'
    columns = [("writer stack (innermost first)", False), ("copies", True), ("copied", True)]
    columns += [("share", True), ("", False), ("processes", True)]
    rows = [
        f'<tr><td class="frames">{_frames(w.frames, truncated=w.truncated)}</td>'
        f"{_n(count(w.copies))}{_n(human_bytes(w.copied_bytes))}"
        f"{_share_cell(w.copied_bytes, whole)}"
        f"{_n('-' if w.processes is None else count(w.processes))}</tr>"
        for w in data.writers[:top]
    ]
    return _table_section(head, columns, rows, top, len(data.writers))


def _python(data: ReportData, top: int, whole: int) -> str:
    if data.python_writers is None:
        return ""
    head = '<section id="python-writers"><h2>Top Python writer stacks</h2>'
    if not data.python_writers:
        return head + '<p class="note">No Python writer stacks were captured.</p></section>'
    columns = [("Python stack (innermost first)", False), ("native leaf", False)]
    columns += [("category", False), ("copies", True), ("copied", True), ("share", True)]
    columns += [("", False)]
    rows = [
        f'<tr><td class="frames">{_frames(p.frames, "py")}</td>'
        f'<td class="frames">{escape(p.native_leaf or "?")}</td>'
        f"<td>{escape(p.category or '-')}</td>{_n(count(p.copies))}"
        f"{_n(human_bytes(p.copied_bytes))}{_share_cell(p.copied_bytes, whole)}</tr>"
        for p in data.python_writers[:top]
    ]
    return _table_section(head, columns, rows, top, len(data.python_writers))


def _types(data: ReportData, top: int, whole: int) -> str:
    if data.python_types is None:
        return ""
    head = '<section id="python-types"><h2>Copied objects by type</h2>'
    if not data.python_types:
        return head + '<p class="note">No Python objects were on the copied pages.</p></section>'
    columns = [("type", False), ("objects", True), ("pages", True), ("copied", True)]
    columns += [("share", True), ("", False), ("by category", False)]
    rows = [
        f"<tr><td>{escape(t.type)}</td>"
        f"{_n('-' if t.objects is None else count(t.objects))}"
        f"{_n('-' if t.pages is None else count(t.pages))}{_n(human_bytes(t.copied_bytes))}"
        f"{_share_cell(t.copied_bytes, whole)}<td>{escape(categories_text(t.by_category))}</td>"
        "</tr>"
        for t in data.python_types[:top]
    ]
    return _table_section(head, columns, rows, top, len(data.python_types))


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
