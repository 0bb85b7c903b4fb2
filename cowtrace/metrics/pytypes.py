"""`cowtrace_python_type_copied_bytes_total{type=...}`: copied bytes by Python type, bounded.

Type names are unbounded label values (every class of every app), so only N series carry a
type and the rest are summed as type="other".  The counters must never go down, yet which
types are the top N changes as a run goes on.  So a named series counts a type's bytes from
the refresh it entered the top N (by bytes so far); what it copied before went to "other";
when it leaves the top N its series ends and its value is folded into "other" (as a retired
pid's counts are folded into its group's).  Every series only grows while it exists, and the
series of one scrape always add up to every byte apportioned to a type.
"""

from __future__ import annotations

from collections.abc import Iterable

from cowtrace.results import PythonTypeStat

DEFAULT_TOP = 20
OTHER = "other"


class TypeCounters:
    """Turns cumulative bytes per type (from each refresh's views) into bounded counters."""

    def __init__(self, top: int = DEFAULT_TOP) -> None:
        self.top = top
        self.named: dict[str, float] = {}
        self.other = 0.0
        self._last: dict[str, int] = {}

    def update(self, stats: Iterable[PythonTypeStat]) -> None:
        """`stats`: every type's cumulative copied bytes now (several families: each once)."""
        now: dict[str, int] = {}
        for stat in stats:
            now[stat.type] = now.get(stat.type, 0) + stat.copied_bytes
        ranked = [n for n in sorted(now, key=lambda n: (-now[n], n)) if n != OTHER and now[n]]
        top = set(ranked[: self.top])
        for name in [n for n in self.named if n not in top]:
            self.other += self.named.pop(name)
        for name in top:
            self.named.setdefault(name, 0.0)
        for name, value in now.items():
            delta = max(0, value - self._last.get(name, 0))
            if name in self.named:
                self.named[name] += delta
            else:
                self.other += delta
        self._last = now

    def series(self) -> list[tuple[str, float]]:
        """(type label, bytes): the named types, then "other" (always present once any)."""
        if not self.named and not self.other:
            return []
        return [*sorted(self.named.items()), (OTHER, self.other)]
