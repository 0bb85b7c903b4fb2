"""What tracing cost, without a kernel: the figures derived from fake readings, the --json
summary's "tracer" fields, the text summary's lines and the cost metrics."""

from __future__ import annotations

import resource

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cowtrace.metrics.address import ListenAddress
from cowtrace.metrics.collector import Health
from cowtrace.metrics.cost import OwnUsage, TracerCost, cost_figures, own_usage
from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions
from cowtrace.model import Counts, Member, Role, Snapshot
from cowtrace.output.summary import summary_dict
from cowtrace.render.summary import cost_lines, summary_lines

MIB = 1 << 20
START = OwnUsage(cpu_s=1.5, rss_bytes=200 * MIB, peak_rss_bytes=220 * MIB)
END = OwnUsage(cpu_s=2.75, rss_bytes=90 * MIB, peak_rss_bytes=230 * MIB)
BPF = {"raw_tracepoint__page_fault_user": (3000, 10), "raw_tracepoint__mm_page_alloc": (1000, 30)}


def cost(bpf=BPF, at_start=True) -> TracerCost:
    return TracerCost(start=START, end=END, bpf=bpf, bpf_stats_at_start=at_start)


@pytest.mark.parametrize(
    ("bpf", "at_start", "state"),
    [(BPF, True, "on"), (None, False, "off"), (BPF, False, "partial"), (None, True, "partial")],
)
def test_bpf_stats_state(bpf, at_start, state):
    assert cost(bpf, at_start).bpf_stats == state


def test_figures_from_readings():
    f = cost_figures(cost(), duration_s=5.0, events=40)
    assert f.cpu_s == 2.75  # since cowtrace started
    assert f.tracing_cpu_s == 1.25  # 2.75 - 1.5
    assert f.tracing_cpu_percent == 25.0  # 1.25 s over 5 s
    assert (f.rss_bytes, f.peak_rss_bytes) == (90 * MIB, 230 * MIB)
    assert f.events_per_second == 8.0
    assert (f.bpf_run_ns, f.bpf_runs) == (4000, 40)
    assert f.bpf_ns_per_event == 100.0  # 4000 ns / 40 events
    assert f.bpf_programs == {
        "raw_tracepoint__mm_page_alloc": {"run_ns": 1000, "runs": 30},
        "raw_tracepoint__page_fault_user": {"run_ns": 3000, "runs": 10},
    }


def test_figures_without_stats_events_or_time():
    off = cost_figures(cost(None, False), duration_s=5.0, events=40)
    assert (off.bpf_run_ns, off.bpf_runs, off.bpf_ns_per_event) == (None, None, None)
    assert off.bpf_programs == {}
    partial = cost_figures(cost(BPF, False), duration_s=5.0, events=40)
    assert (partial.bpf_run_ns, partial.bpf_ns_per_event) == (4000, None)
    idle = cost_figures(cost(), duration_s=5.0, events=0)
    assert (idle.events_per_second, idle.bpf_ns_per_event) == (0.0, None)
    instant = cost_figures(cost(), duration_s=0.0, events=3)
    assert (instant.tracing_cpu_percent, instant.events_per_second) == (None, None)


def snapshot(with_cost=True) -> Snapshot:
    members = [
        Member(10, 1, "master", Role.ROOT, 0.0, counts=Counts(copies=20, reuses=4)),
        Member(11, 10, "worker", Role.CHILD, 0.0, counts=Counts(copies=10, zero_fills=6)),
    ]
    totals = Counts(copies=30, reuses=4, zero_fills=6)
    return Snapshot(
        10,
        100.0,
        105.0,
        members,
        totals,
        ended=True,
        end_reason="root exited",
        attach_s=1.5,
        cost=cost() if with_cost else None,
    )


def test_json_tracer_object():
    tracer = summary_dict(snapshot(), tracer_stats={"lost_events": 0})["tracer"]
    assert tracer == {
        "attach_s": 1.5,
        "lost_events": 0,
        "cpu_s": 2.75,
        "tracing_cpu_s": 1.25,
        "tracing_cpu_percent": 25.0,
        "rss_bytes": 90 * MIB,
        "peak_rss_bytes": 230 * MIB,
        "events": 40,  # 30 copies + 4 reuses + 6 zero-fills
        "events_per_second": 8.0,  # over duration_s 5.0
        "bpf_stats": "on",
        "bpf_run_ns": 4000,
        "bpf_runs": 40,
        "bpf_ns_per_event": 100.0,
        "bpf_programs": {
            "raw_tracepoint__mm_page_alloc": {"run_ns": 1000, "runs": 30},
            "raw_tracepoint__page_fault_user": {"run_ns": 3000, "runs": 10},
        },
    }


def test_json_without_cost_keeps_the_old_tracer_object():
    assert summary_dict(snapshot(False), tracer_stats={"lost_events": 2})["tracer"] == {
        "attach_s": 1.5,
        "lost_events": 2,
    }


def test_text_lines():
    assert cost_lines(snapshot()) == [
        "cost: 1.25 s CPU while tracing (25.00% of a core), 2.75 s in all;"
        " RSS 90.0 MiB (peak 230.0 MiB); 8.0 events/s",
        "BPF programs: 4.0 us in 40 runs, 100 ns per event",
    ]
    lines = summary_lines(snapshot())
    assert lines[3:5] == cost_lines(snapshot())  # after the membership line
    assert cost_lines(snapshot(False)) == []


def test_text_says_how_to_count_bpf_time():
    snap = snapshot()
    snap.cost = cost(None, False)
    assert cost_lines(snap)[1] == (
        "BPF programs: run time not counted (sysctl -w kernel.bpf_stats_enabled=1 counts it)"
    )
    snap.cost = cost({"p": (2_500_000, 1_234_567)}, False)
    assert cost_lines(snap)[1] == (
        "BPF programs: 2.5 ms in 1,234,567 runs (kernel.bpf_stats_enabled changed while"
        " tracing: no per-event figure)"
    )


def test_own_usage_is_this_process():
    usage = own_usage()
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert 0 < usage.rss_bytes <= usage.peak_rss_bytes
    assert 0 < usage.cpu_s <= after.ru_utime + after.ru_stime  # user + system, all threads


# ---- metrics ---------------------------------------------------------------------------------
def scrape(exporter) -> dict[str, float]:
    text = generate_latest(exporter.registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_cost_metrics_over_the_last_refresh(monkeypatch):
    stats = {"on": True, "runs": {"a": (0.5, 100), "b": (0.25, 300)}}
    monkeypatch.setattr("cowtrace.metrics.exporter.rollup_gauges", lambda pid: {})
    monkeypatch.setattr("cowtrace.metrics.exporter.bpf_stats_enabled", lambda: stats["on"])
    monkeypatch.setattr("cowtrace.metrics.exporter.program_run_stats", lambda fds: stats["runs"])
    monkeypatch.setattr("cowtrace.metrics.exporter.own_usage", lambda: END)
    exporter = MetricsExporter(MetricsOptions(ListenAddress("127.0.0.1", 0)))
    exporter.update([snapshot(False)], Health(events=1000, lost_events=0), now=10.0)
    first = scrape(exporter)
    assert first["cowtrace_process_peak_resident_memory_bytes"] == 230 * MIB
    assert "cowtrace_events_per_second" not in first  # no interval yet
    assert "cowtrace_bpf_run_time_seconds_per_event" not in first
    # 4 s later: 3000 records drained and 200 lost; the programs ran 0.5 s more.
    stats["runs"] = {"a": (0.75, 200), "b": (0.5, 600)}
    exporter.update([snapshot(False)], Health(events=3800, lost_events=200), now=14.0)
    second = scrape(exporter)
    assert second["cowtrace_events_per_second"] == 750.0  # 3000 events / 4 s
    # (0.75 + 0.5) - (0.5 + 0.25) = 0.5 s of program time over those 3000 events
    assert second["cowtrace_bpf_run_time_seconds_per_event"] == 0.5 / 3000
    assert second["cowtrace_bpf_stats_enabled"] == 1
    # Stats switched off: the per-event figure goes, the rate stays.
    stats["on"] = False
    exporter.update([snapshot(False)], Health(events=3800, lost_events=200), now=16.0)
    third = scrape(exporter)
    assert third["cowtrace_events_per_second"] == 0.0
    assert "cowtrace_bpf_run_time_seconds_per_event" not in third
    assert third["cowtrace_bpf_stats_enabled"] == 0
