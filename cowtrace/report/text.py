"""The text report: totals, processes, then the top mappings, allocations and writers (rich).

Every section the file lacks is named with why ("not in this file"), because an empty table
would read as "nothing was copied there". Frame names and paths are user data: they go into
``Text`` objects, never markup, so a ``[heap]`` or ``[anon:x]`` is printed as is.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cowtrace.render.attribution import region_label
from cowtrace.render.format import count, human_bytes
from cowtrace.report.model import ProcessRow, ReportData

DEFAULT_TOP = 10


def share(part: int, whole: int) -> str:
    """``42.0%`` of all copied bytes; ``-`` when nothing was copied."""
    return f"{100.0 * part / whole:.1f}%" if whole > 0 else "-"


def describe_source(data: ReportData) -> str:
    """One line on what the file is and what it covers."""
    if data.source == "events":
        span = f", spanning {data.duration_s:.2f}s" if data.duration_s is not None else ""
        return f"event log {data.path}: {count(data.events or 0)} events{span}"
    parts = [f"summary {data.path}"]
    if data.root_pid is not None:
        parts.append(f"root {data.root_pid}")
    if data.duration_s is not None:
        parts.append(f"traced {data.duration_s:.2f}s")
    if data.end_reason:
        parts.append(data.end_reason)
    return ", ".join(parts)


def totals_line(data: ReportData) -> str:
    t = data.totals
    line = (
        f"{count(t.copies)} copies ({human_bytes(t.copied_bytes)}), "
        f"{count(t.file_copies)} file copies, {count(t.gup_copies)} get_user_pages copies, "
        f"{count(t.reuses)} reuses, {count(t.zero_fills)} zero-fills"
    )
    if t.lost_events is not None:
        line += f", {count(t.lost_events)} lost detail events"
    return line


def frames_text(frames: Sequence[str], truncated: bool = False) -> Text:
    """Innermost frame first, one per line; an unfinished walk says so on its last line."""
    text = Text("\n".join(frames) if frames else "(no frames)")
    if truncated:
        text.append("\n… stack truncated (no frame pointers)", style="dim")
    return text


def _missing(console: Console, what: str, data: ReportData) -> None:
    hint = "run with attribution on" if data.source == "summary" else "the log has no such field"
    console.print(Text(f"{what}: not in this file ({hint})", style="dim"))


def _table(title: str, columns: Sequence[tuple[str, bool]], lines: bool = False) -> Table:
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


def process_table(processes: Sequence[ProcessRow], total_bytes: int) -> Table:
    """Columns a file cannot fill (comm from an event log, exit copies before attribution)
    are left out rather than shown as a column of question marks."""
    known = any(p.comm is not None for p in processes)
    exits = any(p.exit_copies is not None for p in processes)
    columns: list[tuple[str, bool]] = [("pid", True)]
    if known:
        columns += [("role", False), ("comm", False)]
    columns += [("copies", True), ("copied", True), ("share", True), ("reuses", True)]
    columns += [("zero-fills", True)]
    if exits:
        columns.append(("exit copies", True))
    if known:
        columns.append(("status", False))
    table = _table("processes", columns)
    for p in processes:
        row = [p.pid_label]
        if known:
            row += ["worker" if p.role == "child" else (p.role or "?"), p.comm or "?"]
        row += [
            count(p.copies),
            human_bytes(p.copied_bytes),
            share(p.copied_bytes, total_bytes),
            count(p.reuses),
            count(p.zero_fills),
        ]
        if exits:
            row.append("-" if p.exit_copies is None else count(p.exit_copies))
        if known:
            row.append(p.status())
        table.add_row(*(Text(cell) for cell in row))
    return table


def render_text(data: ReportData, console: Console, top: int = DEFAULT_TOP) -> None:
    """Print the whole report; ``top`` caps the rows of each ranked table."""
    whole = data.totals.copied_bytes
    console.print(Text.assemble(("cowtrace report: ", "bold"), describe_source(data)))
    console.print(Text("totals: " + totals_line(data)))
    if data.source == "events":
        console.print(
            Text("(counted from the log's lines: events lost to a full ring are not in it)", "dim")
        )
    for line in data.why or []:
        console.print(Text("why: " + line, style="yellow"))
    console.print()
    console.print(process_table(data.processes, whole))
    _render_regions(data, console, top, whole)
    _render_allocations(data, console, top, whole)
    _render_writers(data, console, top, whole)
    _render_python(data, console, top, whole)
    _render_types(data, console, top, whole)
    _render_exit(data, console, top)


def _more(console: Console, shown: int, total: int) -> None:
    if total > shown:
        console.print(Text(f"… {total - shown} more (--top to show more)", style="dim"))


def _render_regions(data: ReportData, console: Console, top: int, whole: int) -> None:
    console.print()
    if data.regions is None:
        _missing(console, "mappings", data)
        return
    table = _table(
        "top mappings by copied bytes",
        [("mapping", False), ("kind", False), ("copies", True), ("copied", True), ("share", True)]
        + [("reuses", True), ("zero-fills", True), ("processes", True)],
    )
    for r in data.regions[:top]:
        cells = [region_label(r, report=True), r.kind, count(r.copies), human_bytes(r.copied_bytes)]
        cells += [share(r.copied_bytes, whole), count(r.reuses), count(r.zero_fills)]
        cells.append(count(r.processes))
        table.add_row(*(Text(c) for c in cells))
    console.print(table if data.regions else Text("top mappings: none"))
    _more(console, top, len(data.regions))


def _render_allocations(data: ReportData, console: Console, top: int, whole: int) -> None:
    console.print()
    if data.allocations is None:
        _missing(console, "allocations", data)
        return
    table = _table(
        "top allocation sites by copied bytes",
        [("allocation site (innermost first)", False), ("origin", False), ("blocks", True)]
        + [("block bytes", True), ("copies", True), ("copied", True), ("share", True)],
        lines=True,
    )
    for a in data.allocations[:top]:
        site = frames_text(a.site) if a.site else Text("(site unknown)", style="dim")
        for block in a.largest:
            site.append(
                f"\n  block {block.addr:#x}: {human_bytes(block.size)}, "
                f"{count(block.copied_pages)} pages copied",
                style="dim",
            )
        origin = a.origin + (f" ({a.allocator})" if a.allocator else "")
        cells = [count(a.blocks), human_bytes(a.block_bytes), count(a.copies)]
        cells += [human_bytes(a.copied_bytes), share(a.copied_bytes, whole)]
        table.add_row(site, Text(origin), *(Text(c) for c in cells))
    console.print(table if data.allocations else Text("top allocation sites: none"))
    _more(console, top, len(data.allocations))


def _render_writers(data: ReportData, console: Console, top: int, whole: int) -> None:
    console.print()
    if data.writers is None:
        _missing(console, "writer stacks", data)
        return
    table = _table(
        "top writer stacks by copied bytes",
        [("writer stack (innermost first)", False), ("copies", True), ("copied", True)]
        + [("share", True), ("processes", True)],
        lines=True,
    )
    for w in data.writers[:top]:
        procs = "-" if w.processes is None else count(w.processes)
        cells = [count(w.copies), human_bytes(w.copied_bytes), share(w.copied_bytes, whole), procs]
        table.add_row(frames_text(w.frames, w.truncated), *(Text(c) for c in cells))
    console.print(table if data.writers else Text("top writer stacks: none"))
    _more(console, top, len(data.writers))


def _render_python(data: ReportData, console: Console, top: int, whole: int) -> None:
    if data.python_writers is None:
        return  # Python stacks exist only for CPython members: no note when absent
    console.print()
    table = _table(
        "top Python writer stacks by copied bytes",
        [("Python stack (innermost first)", False), ("native leaf", False), ("category", False)]
        + [("copies", True), ("copied", True), ("share", True)],
        lines=True,
    )
    for p in data.python_writers[:top]:
        cells = [count(p.copies), human_bytes(p.copied_bytes), share(p.copied_bytes, whole)]
        table.add_row(
            frames_text(p.frames),
            Text(p.native_leaf or "?"),
            Text(p.category or "-"),
            *(Text(c) for c in cells),
        )
    console.print(table if data.python_writers else Text("top Python writer stacks: none"))
    _more(console, top, len(data.python_writers))


def categories_text(by_category: dict[str, int]) -> str:
    """`refcount 80%, gc 20%`: a type's copied bytes by the writers' category."""
    total = sum(by_category.values())
    parts = sorted(by_category.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {share(n, total)}" for name, n in parts if n) or "-"


def _render_types(data: ReportData, console: Console, top: int, whole: int) -> None:
    if data.python_types is None:
        return  # only for CPython members, as the writer stacks
    console.print()
    table = _table(
        "copied objects by type",
        [("type", False), ("objects", True), ("pages", True), ("copied", True)]
        + [("share", True), ("by category", False)],
    )
    for t in data.python_types[:top]:
        table.add_row(
            Text(t.type),
            Text("-" if t.objects is None else count(t.objects)),
            Text("-" if t.pages is None else count(t.pages)),
            Text(human_bytes(t.copied_bytes)),
            Text(share(t.copied_bytes, whole)),
            Text(categories_text(t.by_category)),
        )
    console.print(table if data.python_types else Text("copied objects by type: none"))
    _more(console, top, len(data.python_types))


def _render_exit(data: ReportData, console: Console, top: int) -> None:
    flagged = [p for p in data.processes if p.exit_copies]
    if not flagged:
        return
    console.print()
    console.print(Text("exit-time copies (made just before exit: wasted)", style="bold"))
    for p in sorted(flagged, key=lambda p: (-(p.exit_copies or 0), p.pid)):
        who = f"pid {p.pid}" + (f" ({p.comm})" if p.comm else "")
        console.print(Text(f"  {who}: {count(p.exit_copies or 0)} copies", style="red"))
        for w in p.exit_writers[:top]:
            frames = " ← ".join(w.frames) if w.frames else "(no frames)"
            console.print(Text(f"    {count(w.copies):>8}  {frames}"))
