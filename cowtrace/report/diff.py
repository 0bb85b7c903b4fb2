"""Two runs compared: what grew and what shrank, in copied bytes, along each of the report's
breakdowns (process role, mapping, allocation site, native writer stack, Python category,
Python writer stack, Python object type).

Rows are matched by what they name, never by pid: the same server run twice has new pids, but
the same roles, mappings and code. Each breakdown is compared only when both files have it (a
summary written without attribution has no mappings); the section then says which file lacks
it instead of reporting everything as new or gone. Rows that did not change are counted, not
listed. Ranking is by the size of the change, largest first, whichever its sign.

The Python types' bytes are those of the pages examined: a run whose resolution was over its
time budget left pages out (`python_pages["over_budget"]`), so that section also carries both
runs' counts of them: a type's bytes can shrink merely because fewer of its pages were examined.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from cowtrace.render.attribution import region_label
from cowtrace.render.types_pane import over_budget
from cowtrace.report.model import ReportData

ROLE_NAMES = {"child": "worker"}
"""As the text report names roles: the summary's ``child`` is a worker of the root."""


@dataclass(frozen=True)
class DiffRow:
    """One matched item: its copied bytes before and after, and for roles the processes."""

    label: str
    before: int
    after: int
    frames: tuple[str, ...] | None = None  # stacks: innermost first, one per line
    processes: tuple[int, int] | None = None  # roles: members before, after

    @property
    def change(self) -> int:
        return self.after - self.before

    def percent(self) -> str:
        """``+12.5%``, ``-100.0%``; ``new`` when there was nothing before."""
        if self.before == 0:
            return "new" if self.after else "0.0%"
        return f"{100.0 * self.change / self.before:+.1f}%"


@dataclass
class DiffSection:
    """One breakdown. ``missing`` names the file(s) without it; rows are then empty."""

    title: str
    rows: list[DiffRow] = field(default_factory=list)
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)
    # Python types: pages not examined (over the time budget), before and after; None when
    # neither run left any out.
    not_examined: tuple[int, int] | None = None

    @property
    def grew(self) -> list[DiffRow]:
        return [r for r in self.rows if r.change > 0]

    @property
    def shrank(self) -> list[DiffRow]:
        return [r for r in self.rows if r.change < 0]


@dataclass
class RunDiff:
    before: ReportData
    after: ReportData
    totals: DiffRow
    copies: tuple[int, int]
    sections: list[DiffSection]


Keyed = dict[Hashable, tuple[str, tuple[str, ...] | None, int]]  # key -> (label, frames, bytes)


def _sum(items: Iterable[tuple[Hashable, str, tuple[str, ...] | None, int]]) -> Keyed:
    out: Keyed = {}
    for key, label, frames, value in items:
        _, _, have = out.get(key, (label, frames, 0))
        out[key] = (label, frames, have + value)
    return out


def _compare(title: str, before: Keyed | None, after: Keyed | None) -> DiffSection:
    section = DiffSection(title)
    if before is None or after is None:
        section.missing = [n for n, d in (("before", before), ("after", after)) if d is None]
        return section
    for key in before.keys() | after.keys():
        label, frames, b = before.get(key, (None, None, 0))
        label2, frames2, a = after.get(key, (label, frames, 0))
        row = DiffRow(label2 or "", b, a, frames2)
        if row.change:
            section.rows.append(row)
        else:
            section.unchanged += 1
    section.rows.sort(key=_rank)
    return section


def _role_section(before: ReportData, after: ReportData) -> DiffSection:
    """Copied bytes per role, with how many processes had it in each run: a run with more
    workers copies more for that reason alone."""
    totals: dict[str, list[int]] = {}  # role -> [bytes before, bytes after, n before, n after]
    for column, data in ((0, before), (1, after)):
        for p in data.processes:
            role = ROLE_NAMES.get(p.role or "?", p.role or "?")
            entry = totals.setdefault(role, [0, 0, 0, 0])
            entry[column] += p.copied_bytes
            entry[2 + column] += 1
    section = DiffSection("process role")
    for role, (b, a, nb, na) in totals.items():
        row = DiffRow(role, b, a, processes=(nb, na))
        if row.change or nb != na:
            section.rows.append(row)
        else:
            section.unchanged += 1
    section.rows.sort(key=_rank)
    return section


def _rank(row: DiffRow) -> tuple[int, int, str, tuple[str, ...]]:
    """Largest change first; growth before an equal shrink; then by name and frames, so the
    output does not depend on set order (string hashes differ from run to run)."""
    return (-abs(row.change), -row.change, row.label, row.frames or ())


def _section(
    title: str, before: ReportData, after: ReportData, pick: Callable[[ReportData], Keyed | None]
) -> DiffSection:
    return _compare(title, pick(before), pick(after))


def _regions(data: ReportData) -> Keyed | None:
    if data.regions is None:
        return None
    labels = [(r, region_label(r, report=True)) for r in data.regions]
    return _sum(((r.kind, label), label, None, r.copied_bytes) for r, label in labels)


def _allocations(data: ReportData) -> Keyed | None:
    if data.allocations is None:
        return None
    labels = [(a, f"{a.origin}: {a.site[0]}" if a.site else a.origin) for a in data.allocations]
    return _sum(((a.site, a.origin), label, a.site or None, a.copied_bytes) for a, label in labels)


def _writers(data: ReportData) -> Keyed | None:
    if data.writers is None:
        return None
    leaves = [(w, w.frames[0] if w.frames else "(no frames)") for w in data.writers]
    return _sum((w.frames, leaf, w.frames, w.copied_bytes) for w, leaf in leaves)


def _categories(data: ReportData) -> Keyed | None:
    if data.python_writers is None:
        return None
    return _sum(
        (p.category or "-", p.category or "-", None, p.copied_bytes) for p in data.python_writers
    )


def _python_writers(data: ReportData) -> Keyed | None:
    if data.python_writers is None:
        return None
    return _sum(
        (
            (tuple(p.frames), p.category),
            f"{p.frames[0] if p.frames else '(no frames)'} [{p.category or '-'}]",
            (*p.frames, f"(category {p.category or '-'})"),
            p.copied_bytes,
        )
        for p in data.python_writers
    )


def _python_types(data: ReportData) -> Keyed | None:
    if data.python_types is None:
        return None
    return _sum((t.type, t.type, None, t.copied_bytes) for t in data.python_types)


def diff_runs(before: ReportData, after: ReportData) -> RunDiff:
    """Every breakdown of ``before`` against ``after``. The Python-type section is left out
    when neither file has one (a cowtrace that does not resolve objects yet)."""
    sections = [
        _role_section(before, after),
        _section("mapping", before, after, _regions),
        _section("allocation site", before, after, _allocations),
        _section("writer stack", before, after, _writers),
        _section("Python category", before, after, _categories),
        _section("Python writer stack", before, after, _python_writers),
    ]
    if before.python_types is not None or after.python_types is not None:
        types = _section("Python type", before, after, _python_types)
        skipped = over_budget(before.python_pages), over_budget(after.python_pages)
        if not types.missing and any(skipped):
            types.not_examined = skipped
        sections.append(types)
    return RunDiff(
        before=before,
        after=after,
        totals=DiffRow("all copies", before.totals.copied_bytes, after.totals.copied_bytes),
        copies=(before.totals.copies, after.totals.copies),
        sections=sections,
    )
