"""Which series the exporter shows: pid labels that retire, or aggregates by role.

Counters must equal the kernel's exact counts, yet a fleet of pre-fork servers recycles
workers all day: a pid label per member forever would grow without bound.  So:

- with pid labels, a member's series exist while it lives and for `grace_s` after it exited
  (long enough for Prometheus to scrape its final counts), then they leave the exposition;
- without pid labels, members are summed by (root, role, comm).  A member that retires is
  folded into a carry of its group, so the group's counters never go down even after the
  tracer has forgotten the member.

Pure logic over plain rows: the collector turns the result into Prometheus families.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MEMBER_LABELS = ("root", "role", "comm", "pid")
GROUP_LABELS = ("root", "role", "comm")

# A counter or gauge of one member: (metric key, extra label value), e.g. ("copies", "") or
# ("mapping_copies", "heap").  The collector knows which extra label each key takes.
ValueKey = tuple[str, str]


@dataclass
class MemberRow:
    """The latest values of one member, as the exporter received them."""

    root: int
    pid: int
    role: str
    comm: str
    exit_time: float | None = None  # monotonic seconds; None while alive
    counters: dict[ValueKey, float] = field(default_factory=dict)
    gauges: dict[ValueKey, float] = field(default_factory=dict)  # alive members only

    @property
    def group(self) -> tuple[str, str, str]:
        return (str(self.root), self.role, self.comm)


@dataclass(frozen=True)
class Series:
    labels: tuple[str, ...]  # values for MEMBER_LABELS or GROUP_LABELS
    value: float


class SeriesBook:
    """Remembers every member it was shown until its grace has passed."""

    def __init__(self, *, grace_s: float, pid_labels: bool = True) -> None:
        self.grace_s = grace_s
        self.pid_labels = pid_labels
        self._rows: dict[tuple[int, int], MemberRow] = {}
        self._carry: dict[tuple[str, str, str], dict[ValueKey, float]] = {}

    @property
    def label_names(self) -> tuple[str, ...]:
        return MEMBER_LABELS if self.pid_labels else GROUP_LABELS

    def update(self, rows: Iterable[MemberRow], now: float) -> None:
        """Take the latest rows; members not among them keep their last values (a driver may
        forget a member before its grace ends).  Then retire what has outlived its grace."""
        for row in rows:
            self._rows[(row.root, row.pid)] = row
        for key, row in list(self._rows.items()):
            if row.exit_time is not None and now - row.exit_time >= self.grace_s:
                self._retire(key, row)

    def _retire(self, key: tuple[int, int], row: MemberRow) -> None:
        del self._rows[key]
        if self.pid_labels:
            return
        carry = self._carry.setdefault(row.group, {})
        for value_key, value in row.counters.items():
            carry[value_key] = carry.get(value_key, 0.0) + value

    def forget_root(self, root: int) -> None:
        """A family that ended and retired entirely: drop its carry too (bounded memory)."""
        if any(r == root for r, _ in self._rows):
            return
        for group in [g for g in self._carry if g[0] == str(root)]:
            del self._carry[group]

    def members(self) -> list[MemberRow]:
        """The rows currently shown (alive or within their grace)."""
        return list(self._rows.values())

    def counters(self) -> dict[ValueKey, list[Series]]:
        return self._collect(counters=True)

    def gauges(self) -> dict[ValueKey, list[Series]]:
        return self._collect(counters=False)

    def _collect(self, *, counters: bool) -> dict[ValueKey, list[Series]]:
        if self.pid_labels:
            out: dict[ValueKey, list[Series]] = {}
            for row in sorted(self._rows.values(), key=lambda r: (r.root, r.pid)):
                labels = (*row.group, str(row.pid))
                values = row.counters if counters else row.gauges
                for value_key, value in values.items():
                    out.setdefault(value_key, []).append(Series(labels, value))
            return out
        sums: dict[ValueKey, dict[tuple[str, str, str], float]] = {}
        if counters:
            for group, carried in self._carry.items():
                for value_key, value in carried.items():
                    by_group = sums.setdefault(value_key, {})
                    by_group[group] = by_group.get(group, 0.0) + value
        for row in self._rows.values():
            values = row.counters if counters else row.gauges
            for value_key, value in values.items():
                by_group = sums.setdefault(value_key, {})
                by_group[row.group] = by_group.get(row.group, 0.0) + value
        return {
            value_key: [Series(group, value) for group, value in sorted(by_group.items())]
            for value_key, by_group in sums.items()
        }
