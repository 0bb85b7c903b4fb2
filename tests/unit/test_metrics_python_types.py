"""cowtrace_python_type_copied_bytes_total: bounded by --python-types-top, no series decreasing,
the series of a scrape adding up to every byte apportioned to a type."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from cowtrace.metrics.collector import Exposition, SnapshotCollector
from cowtrace.metrics.pytypes import TypeCounters
from cowtrace.results import PythonTypeStat


def stats(**bytes_by_type: int) -> list[PythonTypeStat]:
    return [PythonTypeStat(name, 1, n, 1) for name, n in bytes_by_type.items()]


def test_top_types_named_rest_other() -> None:
    counters = TypeCounters(top=2)
    counters.update(stats(dict=500, str=300, list=100, tuple=50))
    assert counters.series() == [("dict", 500.0), ("str", 300.0), ("other", 150.0)]


def test_a_type_leaving_the_top_folds_into_other() -> None:
    counters = TypeCounters(top=2)
    counters.update(stats(dict=500, str=300, list=100))
    assert counters.series() == [("dict", 500.0), ("str", 300.0), ("other", 100.0)]
    # list overtakes str: str's series ends, its bytes go to "other"; list counts from now
    counters.update(stats(dict=600, str=310, list=1000))
    assert counters.series() == [("dict", 600.0), ("list", 900.0), ("other", 410.0)]
    # a family retired (its dict bytes gone from the view): dict leaves the top, its series
    # folds into "other"; nothing goes down and the sum stays every byte ever counted
    counters.update(stats(dict=100, str=310, list=1000))
    assert counters.series() == [("list", 900.0), ("str", 0.0), ("other", 1010.0)]
    counters.update(stats(dict=150, str=320, list=1000))
    assert counters.series() == [("list", 900.0), ("str", 10.0), ("other", 1060.0)]
    assert sum(v for _, v in counters.series()) == 500 + 300 + 100 + 100 + 10 + 900 + 50 + 10


def test_a_type_named_later_counts_from_then() -> None:
    counters = TypeCounters(top=2)
    counters.update(stats(dict=500))
    counters.update(stats(dict=500, str=300))
    assert counters.series() == [("dict", 500.0), ("str", 300.0), ("other", 0.0)]
    counters = TypeCounters(top=0)
    counters.update(stats(dict=500, str=300))
    assert counters.series() == [("other", 800.0)]


def test_exposed_family() -> None:
    collector = SnapshotCollector()
    collector.exposition = Exposition(python_types=(("app.A", 4096.0), ("other", 10.0)))
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'cowtrace_python_type_copied_bytes_total{type="app.A"} 4096.0' in text
    assert 'cowtrace_python_type_copied_bytes_total{type="other"} 10.0' in text
