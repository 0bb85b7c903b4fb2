"""dashboards/cowtrace.json is importable into current Grafana and reads only metrics that
cowtrace exports (the kernel test evaluates every expression against a real Prometheus)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from cowtrace.attribution.view import AttributionView
from cowtrace.metrics.address import ListenAddress
from cowtrace.metrics.collector import Health
from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions
from cowtrace.model import Counts, Member, Role, Snapshot

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "cowtrace.json"


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_shape():
    dashboard = load()
    assert dashboard["schemaVersion"] >= 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["instance", "root", "comm"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["description"]
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_every_metric_of_the_dashboard_is_exported(monkeypatch):
    monkeypatch.setattr("cowtrace.metrics.exporter.rollup_gauges", lambda pid: {})
    exporter = MetricsExporter(MetricsOptions(ListenAddress("127.0.0.1", 0)))
    member = Member(7, 1, "w", Role.CHILD, 0.0, counts=Counts(copies=1))
    view = AttributionView(copies_by_kind={(7, "heap"): 1}, exit_copies={7: 1})
    exporter.update([Snapshot(7, 0.0, 1.0, [member], Counts(), attribution=view)], Health())
    exposition = generate_latest(exporter.registry).decode()
    exported = set(re.findall(r"^# TYPE (\w+)", exposition, re.MULTILINE))
    exported |= {f"{name}_total" for name in exported}
    text = json.dumps(load())
    used = set(re.findall(r"\b(cowtrace_[a-z_]+)\b", text))
    assert used, "the dashboard reads no cowtrace metric"
    assert used <= exported, used - exported
