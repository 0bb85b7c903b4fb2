"""Attribution as text: top mappings, allocations, writers and exit-time copies.

One renderer per section for every output: the live view (rich panes), the plain periodic
lines, the final summary and `cowtrace report`'s tables (report/text.py), so all of them name
a mapping or a stack the same way.  Everything here reads the result types of
cowtrace/results.py (an AttributionView and the snapshot's members, or the rows a report
loaded); nothing computes attribution.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.model import Snapshot
from cowtrace.render import format as fmt
from cowtrace.render.table import Ranked, frames_text, report_section, share
from cowtrace.results import (
    AllocationStat,
    AttributionView,
    ProcessExit,
    RegionStat,
    WriterStat,
)

STACK_FRAMES = 3  # frames shown per stack in tables (innermost first)


def region_label(region: RegionStat, *, report: bool = False) -> str:
    """``[heap]``, ``anonymous``, ``[anon:cache]``, ``/usr/bin/python3 .data``,
    ``shm /dev/shm/x``; `report`: the report's wording, ``/usr/bin/python3 (.data)``, the kind
    for a nameless mapping other than plain anonymous memory, no ``shm`` prefix."""
    if report:
        name = region.name or ("anonymous" if region.kind in ("anon", "") else region.kind)
        return f"{name} ({region.section})" if region.section else name
    if region.kind == "anon":
        return "anonymous"
    label = region.name or region.kind
    if region.kind == "shm":
        label = f"shm {label}"
    if region.section:
        label = f"{label} {region.section}"
    return label


def stack_label(frames: Sequence[str], truncated: bool, limit: int = STACK_FRAMES) -> str:
    """``leaf (mod) < caller (mod) < …``; a cut stack says so instead of showing garbage."""
    if not frames:
        return "(no stack)" if not truncated else "(stack unavailable: no frame pointers)"
    shown = " < ".join(frames[:limit])
    if len(frames) > limit:
        shown += f" < … {len(frames) - limit} more"
    if truncated:
        shown += " [truncated: no frame pointers]"
    return shown


def allocation_label(stat: AllocationStat) -> str:
    if stat.origin == "recovered":
        return f"{stat.allocator} heap, recovered at attach (no allocation stack)"
    return stack_label(stat.site, False)


def allocation_detail(stat: AllocationStat) -> str:
    """``12 blocks, 3.0 MiB; largest 64.0 MiB (4,096 pages copied)``."""
    noun = "block" if stat.blocks == 1 else "blocks"
    text = f"{fmt.count(stat.blocks)} {noun}, {fmt.human_bytes(stat.block_bytes)}"
    if stat.largest:
        big = stat.largest[0]
        text += (
            f"; largest {fmt.human_bytes(big.size)} ({fmt.count(big.copied_pages)} pages copied)"
        )
    return text


def processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def has_data(view: AttributionView | None) -> bool:
    return view is not None and bool(
        view.regions or view.allocations or view.writers or view.exit_copies
    )


def exit_rows(snapshot: Snapshot) -> list[tuple[int, str, int]]:
    """(pid, comm, exit-time copies) of members that made any, most first."""
    view = snapshot.attribution
    if view is None:
        return []
    comms = {m.pid: m.comm for m in snapshot.members}
    rows = [(pid, comms.get(pid, "?"), n) for pid, n in view.exit_copies.items() if n > 0]
    return sorted(rows, key=lambda r: (-r[2], r[0]))


def pane_rows(snapshot: Snapshot, top: int) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(title, rows of (copied, label, detail)) for each pane that has something to show."""
    view = snapshot.attribution
    if view is None:
        return []
    panes: list[tuple[str, list[tuple[str, str, str]]]] = []
    if view.regions:
        panes.append(
            (
                "top mappings",
                [
                    (
                        fmt.human_bytes(r.copied_bytes),
                        region_label(r),
                        f"{fmt.count(r.copies)} copies in {processes(r.processes)}",
                    )
                    for r in view.regions[:top]
                ],
            )
        )
    if view.allocations:
        panes.append(
            (
                "top allocations",
                [
                    (fmt.human_bytes(a.copied_bytes), allocation_label(a), allocation_detail(a))
                    for a in view.allocations[:top]
                ],
            )
        )
    if view.writers:
        panes.append(
            (
                "top writers",
                [
                    (
                        fmt.human_bytes(w.copied_bytes),
                        stack_label(w.frames, w.truncated),
                        f"{fmt.count(w.copies)} copies in {processes(w.processes)}",
                    )
                    for w in view.writers[:top]
                ],
            )
        )
    exits = exit_rows(snapshot)
    if exits:
        panes.append(
            (
                "exit-time copies (waste: freed right after)",
                [
                    (fmt.human_bytes(n * PAGE_SIZE), f"pid {pid} {comm}", f"{fmt.count(n)} copies")
                    for pid, comm, n in exits[:top]
                ],
            )
        )
    return panes


def text_lines(snapshot: Snapshot, top: int) -> list[str]:
    """The panes as plain text (the final summary without a terminal)."""
    lines: list[str] = []
    for title, rows in pane_rows(snapshot, top):
        lines.append(f"{title}:")
        width = max(len(copied) for copied, _, _ in rows)
        lines.extend(f"  {c.rjust(width)}  {label}  ({detail})" for c, label, detail in rows)
    return lines


def plain_lines(snapshot: Snapshot, top: int) -> list[str]:
    """``  top mapping=... copied_bytes=N copies=N`` key=value lines for the periodic output."""
    view = snapshot.attribution
    if view is None:
        return []
    lines = [
        f"  top mapping={fmt.comm_token(region_label(r))} copies={r.copies}"
        f" copied_bytes={r.copied_bytes} processes={r.processes}"
        for r in view.regions[:top]
    ]
    lines += [
        f"  top allocation={fmt.comm_token(allocation_label(a))} copies={a.copies}"
        f" copied_bytes={a.copied_bytes} blocks={a.blocks}"
        for a in view.allocations[:top]
    ]
    lines += [
        f"  top writer={fmt.comm_token(stack_label(w.frames, w.truncated))} copies={w.copies}"
        f" copied_bytes={w.copied_bytes} processes={w.processes}"
        for w in view.writers[:top]
    ]
    lines += [
        f"  exit_copies pid={pid} comm={fmt.comm_token(comm)} copies={n} waste=yes"
        for pid, comm, n in exit_rows(snapshot)[:top]
    ]
    return lines


# ---- `cowtrace report`'s tables (report/text.py) -------------------------------------------
REGIONS = Ranked(
    "top mappings by copied bytes",
    [("mapping", False), ("kind", False), ("copies", True), ("copied", True), ("share", True)]
    + [("reuses", True), ("zero-fills", True), ("processes", True)],
    what="mappings",
)
ALLOCATIONS = Ranked(
    "top allocation sites by copied bytes",
    [("allocation site (innermost first)", False), ("origin", False), ("blocks", True)]
    + [("block bytes", True), ("copies", True), ("copied", True), ("share", True)],
    lines=True,
    what="allocations",
)
WRITERS = Ranked(
    "top writer stacks by copied bytes",
    [("writer stack (innermost first)", False), ("copies", True), ("copied", True)]
    + [("share", True), ("processes", True)],
    lines=True,
    what="writer stacks",
)


def regions_report(
    regions: Sequence[RegionStat] | None, console: Console, top: int, whole: int, source: str
) -> None:
    def cells(r: RegionStat) -> list[Text]:
        texts = [region_label(r, report=True), r.kind, fmt.count(r.copies)]
        texts += [fmt.human_bytes(r.copied_bytes), share(r.copied_bytes, whole)]
        texts += [fmt.count(r.reuses), fmt.count(r.zero_fills), fmt.count(r.processes)]
        return [Text(t) for t in texts]

    report_section(console, REGIONS, regions, cells, top, source)


def allocations_report(
    allocations: Sequence[AllocationStat] | None,
    console: Console,
    top: int,
    whole: int,
    source: str,
) -> None:
    def cells(a: AllocationStat) -> list[Text]:
        site = frames_text(a.site) if a.site else Text("(site unknown)", style="dim")
        for block in a.largest:
            site.append(
                f"\n  block {block.addr:#x}: {fmt.human_bytes(block.size)}, "
                f"{fmt.count(block.copied_pages)} pages copied",
                style="dim",
            )
        origin = a.origin + (f" ({a.allocator})" if a.allocator else "")
        texts = [fmt.count(a.blocks), fmt.human_bytes(a.block_bytes), fmt.count(a.copies)]
        texts += [fmt.human_bytes(a.copied_bytes), share(a.copied_bytes, whole)]
        return [site, Text(origin), *(Text(t) for t in texts)]

    report_section(console, ALLOCATIONS, allocations, cells, top, source)


def writers_report(
    writers: Sequence[WriterStat] | None, console: Console, top: int, whole: int, source: str
) -> None:
    def cells(w: WriterStat) -> list[Text]:
        procs = "-" if w.processes is None else fmt.count(w.processes)
        texts = [fmt.count(w.copies), fmt.human_bytes(w.copied_bytes)]
        texts += [share(w.copied_bytes, whole), procs]
        return [frames_text(w.frames, w.truncated), *(Text(t) for t in texts)]

    report_section(console, WRITERS, writers, cells, top, source)


def exits_report(
    exits: Sequence[tuple[int, str | None, ProcessExit]], console: Console, top: int
) -> None:
    """(pid, comm, exit-time copies and their writers) of the processes that made any."""
    if not exits:
        return
    console.print()
    console.print(Text("exit-time copies (made just before exit: wasted)", style="bold"))
    for pid, comm, ended in sorted(exits, key=lambda e: (-e[2].copies, e[0])):
        who = f"pid {pid}" + (f" ({comm})" if comm else "")
        console.print(Text(f"  {who}: {fmt.count(ended.copies)} copies", style="red"))
        for w in ended.writers[:top]:
            frames = " ← ".join(w.frames) if w.frames else "(no frames)"
            console.print(Text(f"    {fmt.count(w.copies):>8}  {frames}"))
