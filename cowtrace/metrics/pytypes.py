"""`cowtrace_python_type_copied_bytes_total{type=...}`: copied bytes by Python type, bounded.

Type names are unbounded label values (every class of every app), so only N series carry a
type and the rest are summed as type="other".  The counters must never go down, yet which
types are the top N changes as a run goes on.  So the set of named types is sticky: a type
is named when it ranks among the top N at a refresh and fewer than N are named; from then on
its series grows by its own new bytes, and what it copied before being named stays in
"other".  Every series is monotonic and their sum is every byte apportioned to a type.
"""

from __future__ import annotations

from collections.abc import Iterable

from cowtrace.attribution.view import PythonTypeStat

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
        for name in sorted(now, key=lambda n: (-now[n], n)):
            if len(self.named) >= self.top:
                break
            if name != OTHER and name not in self.named and now[name] > 0:
                self.named[name] = 0.0
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
