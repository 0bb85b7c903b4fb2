"""Metrics logic without a kernel: --metrics-addr parsing, pid-label retirement, aggregation
by role, the exposition of a synthetic Snapshot (attribution included) and root discovery."""

from __future__ import annotations

import re

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cowtrace.agent.discovery import RootMatcher, new_roots
from cowtrace.errors import CowtraceError
from cowtrace.host.cgroup import PodIdentity
from cowtrace.host.procfs import ProcStat
from cowtrace.metrics.address import ListenAddress, parse_listen_address
from cowtrace.metrics.collector import Health
from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions, metrics_options
from cowtrace.metrics.series import MemberRow, SeriesBook
from cowtrace.model import Counts, Member, Role, Snapshot
from cowtrace.results import AttributionView


# ---- --metrics-addr ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("9949", "127.0.0.1", 9949),
        (":9949", "127.0.0.1", 9949),
        ("0.0.0.0:9949", "0.0.0.0", 9949),
        ("localhost:0", "localhost", 0),
        ("[::1]:9949", "::1", 9949),
    ],
)
def test_listen_address(text, host, port):
    assert parse_listen_address(text) == ListenAddress(host, port)


@pytest.mark.parametrize("text", ["", "host:", "host:port", "1:2:3", "[::1]9949", "70000"])
def test_bad_listen_address_is_a_cowtrace_error(text):
    with pytest.raises(CowtraceError):
        parse_listen_address(text)


def test_delayacct_needs_metrics():
    with pytest.raises(CowtraceError):
        metrics_options(None, 300, False, True)
    assert metrics_options(None, 300, False, False) is None


# ---- retirement and aggregation --------------------------------------------------------------
def row(pid, copies, *, root=100, role="child", comm="w", exit_time=None, gauge=None):
    gauges = {} if gauge is None else {("rss_bytes", ""): gauge}
    return MemberRow(root, pid, role, comm, exit_time, {("copies", ""): copies}, gauges)


def values(book, counters=True):
    table = book.counters() if counters else book.gauges()
    return {s.labels: s.value for s in table.get(("copies" if counters else "rss_bytes", ""), [])}


def test_pid_labels_stay_for_the_grace_period_then_leave():
    book = SeriesBook(grace_s=10, pid_labels=True)
    book.update([row(1, 5), row(2, 7, exit_time=100.0)], now=101)
    assert values(book) == {("100", "child", "w", "1"): 5, ("100", "child", "w", "2"): 7}
    # The driver may forget the exited member: its last values stay until the grace ends.
    book.update([row(1, 6)], now=109.9)
    assert ("100", "child", "w", "2") in values(book)
    book.update([row(1, 6)], now=110)
    assert values(book) == {("100", "child", "w", "1"): 6}


def test_without_pid_labels_groups_sum_and_never_go_down():
    book = SeriesBook(grace_s=5, pid_labels=False)
    book.update(
        [row(1, 5, gauge=10), row(2, 7, exit_time=100.0), row(3, 1, role="root", comm="m")],
        now=101,
    )
    assert values(book) == {("100", "child", "w"): 12, ("100", "root", "m"): 1}
    assert values(book, counters=False) == {("100", "child", "w"): 10}
    book.update([row(1, 9, gauge=11)], now=200)  # member 2 retired: folded into the carry
    assert values(book) == {("100", "child", "w"): 16, ("100", "root", "m"): 1}
    assert book.label_names == ("root", "role", "comm")


def test_a_retired_family_drops_its_carry():
    book = SeriesBook(grace_s=1, pid_labels=False)
    book.update([row(1, 5, exit_time=0.0)], now=0.5)
    book.update([], now=2)
    assert values(book) == {("100", "child", "w"): 5}
    book.forget_root(100)
    assert values(book) == {}


# ---- the exposition of a synthetic Snapshot ---------------------------------------------------
def snapshot(attribution=None):
    members = [
        Member(100, 1, "master", Role.ROOT, 0.0, counts=Counts(copies=3, reuses=1)),
        Member(
            101,
            100,
            "worker",
            Role.CHILD,
            0.0,
            counts=Counts(copies=40, zero_fills=2, wp_retries=3),
        ),
        Member(102, 100, "worker", Role.CHILD, 0.0, exit_time=1.0, counts=Counts(copies=9)),
    ]
    return Snapshot(100, 0.0, 2.0, members, Counts(), attribution=attribution)


def scrape(exporter):
    text = generate_latest(exporter.registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


# Pod labels (host.cgroup) of a family outside Kubernetes: every one empty.
NO_POD = {"namespace": "", "pod": "", "pod_uid": "", "container_id": ""}


def no_pod(pid: int) -> PodIdentity:
    return PodIdentity()


def member(pid, role="child", comm="worker", **extra):
    labels = {"root": "100", "role": role, "comm": comm, "pid": str(pid), **NO_POD, **extra}
    return tuple(sorted(labels.items()))


def test_exposition_counts_and_attribution(monkeypatch):
    monkeypatch.setattr("cowtrace.metrics.exporter.rollup_gauges", lambda pid: {})
    view = AttributionView(
        copies_by_kind={(101, "heap"): 30, (101, "anon"): 10, (102, "heap"): 9},
        exit_copies={102: 9},
    )
    exporter = MetricsExporter(
        MetricsOptions(ListenAddress("127.0.0.1", 0), 60.0, pod_identity=no_pod)
    )
    exporter.update([snapshot(view)], Health(lost_events=4, events=55), now=3.0)
    text, samples = scrape(exporter)
    assert samples[("cowtrace_copies_total", member(101))] == 40
    assert samples[("cowtrace_copied_bytes_total", member(101))] == 40 * 4096
    assert samples[("cowtrace_zero_fills_total", member(101))] == 2
    assert samples[("cowtrace_wp_retries_total", member(101))] == 3
    assert samples[("cowtrace_wp_retries_total", member(102))] == 0
    assert samples[("cowtrace_reuses_total", member(100, "root", "master"))] == 1
    assert samples[("cowtrace_mapping_copies_total", member(101, mapping="heap"))] == 30
    assert samples[("cowtrace_mapping_copies_total", member(102, mapping="heap"))] == 9
    assert samples[("cowtrace_exit_copies_total", member(102))] == 9
    assert samples[("cowtrace_exit_copies_total", member(101))] == 0  # known, and zero
    family = tuple(sorted({"comm": "master", "root": "100", **NO_POD}.items()))
    assert samples[("cowtrace_family_processes", family)] == 2
    assert samples[("cowtrace_lost_events_total", ())] == 4
    assert samples[("cowtrace_events_total", ())] == 55
    assert samples[("cowtrace_attribution_enabled", ())] == 1
    # The exited worker leaves once the grace has passed.
    exporter.update([snapshot(view)], Health(), now=61.0)
    _, samples = scrape(exporter)
    assert ("cowtrace_copies_total", member(102)) not in samples
    assert not re.search(r"^cowtrace_\w+ NaN", text, re.MULTILINE)


def test_no_attribution_no_attribution_series(monkeypatch):
    monkeypatch.setattr("cowtrace.metrics.exporter.rollup_gauges", lambda pid: {})
    exporter = MetricsExporter(
        MetricsOptions(ListenAddress("127.0.0.1", 0), pid_labels=False, pod_identity=no_pod)
    )
    exporter.update([snapshot()], Health(), now=3.0)
    _, samples = scrape(exporter)
    assert not [k for k in samples if k[0] in ("cowtrace_mapping_copies_total",)]
    group = tuple(sorted({"root": "100", "role": "child", "comm": "worker", **NO_POD}.items()))
    assert samples[("cowtrace_copies_total", group)] == 49
    assert samples[("cowtrace_attribution_enabled", ())] == 0


# ---- root discovery ------------------------------------------------------------------------
def stat(pid, ppid, comm, start=0, state="S"):
    return ProcStat(pid=pid, comm=comm, state=state, ppid=ppid, flags=0, start_ticks=start)


def test_new_roots_leaves_workers_to_their_master():
    processes = [
        stat(1, 0, "init"),
        stat(10, 1, "gunicorn", start=5),
        stat(11, 10, "gunicorn", start=6),
        stat(20, 1, "gunicorn", start=3),
        stat(30, 1, "gunicorn", state="Z"),
        stat(40, 1, "nginx"),
    ]
    matcher = RootMatcher.from_options("^gunicorn$", [])
    roots = new_roots(processes, matcher, lambda pid: pid == 20, own_pid=999)
    assert [s.pid for s in roots] == [10]
    named = RootMatcher.from_options(None, [11, 40])
    assert [s.pid for s in new_roots(processes, named, lambda pid: False, 999)] == [
        40,
        11,
    ]  # oldest first


@pytest.mark.parametrize(("comm", "pids"), [(None, []), ("(", []), (None, [0])])
def test_bad_agent_targets(comm, pids):
    with pytest.raises(CowtraceError):
        RootMatcher.from_options(comm, pids)
