"""dashboards/*.json load through Grafana's own dashboard model (grafana-foundation-sdk), pick
their Prometheus through a datasource variable (so file provisioning and the UI's import load
them alike), and read only metrics that cowtrace's exporter serves (the kernel test evaluates
every expression against a real Prometheus)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, VariableModel

from cowtrace.metrics.address import ListenAddress
from cowtrace.metrics.collector import Health
from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions
from cowtrace.model import Counts, Member, Role, Snapshot
from cowtrace.results import AttributionView

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "dashboards").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

NOT_IN_MODEL = {("__requires",), ("templating", "list", "definition")}
"""Keys Grafana's model does not carry: the import's plugin list, and the text the UI shows
for a query variable (Grafana rebuilds it from the query)."""


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["cowtrace.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_shape(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["schemaVersion"] >= 39
    # No import-time input: provisioning would leave ${DS_PROMETHEUS} unresolved.
    assert "__inputs" not in dashboard
    assert "DS_PROMETHEUS" not in path.read_text()
    variables = dashboard["templating"]["list"]
    assert [v["name"] for v in variables] == ["datasource", "instance", "root", "comm"]
    assert (variables[0]["type"], variables[0]["query"]) == ("datasource", "prometheus")
    for variable in variables[1:]:
        assert variable["datasource"] == DATASOURCE, variable["name"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"]
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def decode(path: Path) -> Dashboard:
    register_default_plugins()  # the panel and query kinds (prometheus, timeseries, ...)
    return Dashboard.from_json(load(path))


def lost_keys(original: Any, decoded: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Keys (and values) of ``original`` that the model's re-encoding does not give back."""
    if isinstance(original, dict):
        lost = []
        for key, value in original.items():
            here = (*path, key)
            if here in NOT_IN_MODEL:
                continue
            if not isinstance(decoded, dict) or key not in decoded:
                lost.append("/".join(here))
            else:
                lost += lost_keys(value, decoded[key], here)
        return lost
    if isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            return ["/".join(path)]
        return [k for o, d in zip(original, decoded, strict=True) for k in lost_keys(o, d, path)]
    return [] if original == decoded else [f"{'/'.join(path)} = {original!r} != {decoded!r}"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_model_reads_every_field(path: Path) -> None:
    """Decoded by Grafana's model and encoded back, nothing is lost or changed: every field
    the dashboard sets is one Grafana's schema has (a misspelt or made-up key is lost on the
    way). The model does not check value types: a string where a number belongs passes."""
    dashboard = decode(path)
    again = json.loads(json.dumps(dashboard, cls=JSONEncoder))
    assert lost_keys(load(path), again) == []
    datasource = dashboard.templating.list_val[0]
    assert isinstance(datasource, VariableModel)
    assert (datasource.type_val, datasource.query) == ("datasource", "prometheus")
    for panel in dashboard.panels or []:
        assert (panel.datasource.type_val, panel.datasource.uid) == ("prometheus", "${datasource}")
        for target in panel.targets or []:
            assert isinstance(target, prometheus.Dataquery), panel.title  # not an unknown query
            assert target.datasource == DATASOURCE  # the query kind keeps it as given


def served_metric_names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every sample name the exporter serves, from its own registry: the families it yields
    and, for each kind, the names Prometheus sees (counters end in _total)."""
    monkeypatch.setattr("cowtrace.metrics.exporter.rollup_gauges", lambda pid: {})
    exporter = MetricsExporter(MetricsOptions(ListenAddress("127.0.0.1", 0)))
    member = Member(7, 1, "w", Role.CHILD, 0.0, counts=Counts(copies=1))
    view = AttributionView(copies_by_kind={(7, "heap"): 1}, exit_copies={7: 1})
    exporter.update([Snapshot(7, 0.0, 1.0, [member], Counts(), attribution=view)], Health())
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["_sum", "_count", "_created"],
        "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
        "info": ["_info"],
    }
    names: set[str] = set()
    for family in exporter.registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, []))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable, from the model."""
    queries = []
    for panel in dashboard.panels or []:
        for target in panel.targets or []:
            queries.append((f"panel {panel.title!r}", target.expr))
    for variable in dashboard.templating.list_val or []:
        if variable.type_val == "query":
            query = variable.query
            text = query.get("query") if isinstance(query, dict) else query
            queries.append((f"variable {variable.name}", text))
    return queries


_METRIC = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)|\b(cowtrace_[a-zA-Z0-9_:]*)")
"""A metric name: an identifier right before a selector's ``{`` or a range's ``[``, or any
identifier in cowtrace's namespace (``label_values(cowtrace_build_info, instance)``)."""


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_reads_served_metrics(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = served_metric_names(monkeypatch)
    assert "cowtrace_copies_total" in served  # the registry was read, not an empty set
    queries = dashboard_queries(decode(path))
    assert len(queries) >= len(load(path)["panels"]) + 3
    for where, query in queries:
        used = {a or b for a, b in _METRIC.findall(query)}
        assert used, f"{where} reads no metric: {query}"
        assert used <= served, (
            f"{where} reads {sorted(used - served)}, which cowtrace does not serve"
        )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_do_not_overlap(path: Path) -> None:
    """Every panel inside Grafana's 24 columns, no two sharing a cell: Grafana would push one
    down and the layout read in the file would not be the one shown."""
    cells: dict[tuple[int, int], str] = {}
    for panel in load(path)["panels"]:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and 0 <= pos["x"] <= 24 - pos["w"], panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def panels_reading(dashboard: dict, metric: str) -> list[dict]:
    return [p for p in dashboard["panels"] if any(metric in t["expr"] for t in p["targets"])]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_python_type_metric_has_a_panel(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python types' metrics, each read by a panel (the copied bytes by type, and the
    pages left out of them over the time budget): a figure only scraped is seldom seen."""
    served = {
        name
        for name in served_metric_names(monkeypatch)
        if name.startswith("cowtrace_python_type_") and name.endswith("_total")
    }
    assert served == {
        "cowtrace_python_type_copied_bytes_total",
        "cowtrace_python_type_pages_over_budget_total",
    }
    dashboard = load(path)
    for metric in served:
        assert panels_reading(dashboard, metric), f"no panel reads {metric}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_pages_over_budget_panel(path: Path) -> None:
    """A rate per instance (the counter has no other label: one per tracer), its description
    saying what is left out and which flag sets the budget, right under the types' panel."""
    dashboard = load(path)
    (types,) = panels_reading(dashboard, "cowtrace_python_type_copied_bytes_total")
    (panel,) = panels_reading(dashboard, "cowtrace_python_type_pages_over_budget_total")
    assert panel["type"] == "timeseries"
    assert [t["expr"] for t in panel["targets"]] == [
        "sum by (instance) (rate(cowtrace_python_type_pages_over_budget_total"
        '{instance=~"$instance"}[$__rate_interval]))'
    ]
    assert panel["fieldConfig"]["defaults"]["unit"] == "short"
    assert "--python-types-budget" in panel["description"]
    assert "not examined" in panel["description"]
    above = types["gridPos"]
    assert panel["gridPos"] == {**above, "y": above["y"] + above["h"]}
    assert panel["id"] == max(p["id"] for p in dashboard["panels"])
