"""Attribution as text: top mappings, allocations, writers and exit-time copies.

Shared by the live view (rich panes), the plain periodic lines and the final summary, so all
three name a mapping or a stack the same way.  Everything here reads an AttributionView and
the snapshot's members; nothing computes attribution.
"""

from __future__ import annotations

from collections.abc import Sequence

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.model import Snapshot
from cowtrace.render import format as fmt
from cowtrace.results import AllocationStat, AttributionView, RegionStat

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
