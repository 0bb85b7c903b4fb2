"""A real Prometheus scrapes `cowtrace run --metrics-addr` on a fixture with a known answer;
every PromQL expression of every dashboard panel must return data, and the counters must be
the kernel's exact counts.

The fixture (child_writes: the child copies each of the 256 pages of a buffer) runs under a
shell that then keeps one worker (`sleep`) alive, so that cowtrace keeps serving while
Prometheus scrapes and the memory gauges of a live worker exist.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from cowtrace.host import taskstats
from cowtrace.metrics.samplers import BPF_STATS_SYSCTL
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import COWTRACE, EXIT_RECORD_TIMEOUT_S, read_jsonl
from tests.kernel.streams import Lines
from tests.promserver import Prometheus, http_get, metrics_url, promtool_check, value

build = load_build()
DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "cowtrace.json"
PAGES = 256
# Series that exist only when attribution is on in the tracer (see cowtrace_attribution_enabled).
ATTRIBUTION_METRICS = ("cowtrace_mapping_copies_total", "cowtrace_exit_copies_total")
# Series only a CPython member has (copied bytes by Python type, and the pages left out of them
# over the time budget): this family is C, so the panels reading them must have no data at all
# (tests/kernel/test_python_types.py checks the bytes; tests/unit/test_python_types_budget.py
# the pages).
PYTHON_METRICS = (
    "cowtrace_python_type_copied_bytes_total",
    "cowtrace_python_type_pages_over_budget_total",
)
# What Grafana would put in place of the dashboard's variables.
VARIABLES = {
    "$__rate_interval": "10s",
    "$__range": "5m",
    "$instance": ".*",
    "$root": ".*",
    "$comm": ".*",
}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression with the variables filled in) for every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name in sorted(VARIABLES, key=len, reverse=True):
                expr = expr.replace(name, VARIABLES[name])
            assert "$" not in expr, f"unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


@pytest.fixture
def bpf_stats():
    """The BPF run-time panel needs kernel.bpf_stats_enabled=1; put it back afterwards."""
    before = BPF_STATS_SYSCTL.read_text().strip()
    BPF_STATS_SYSCTL.write_text("1\n")
    yield
    BPF_STATS_SYSCTL.write_text(f"{before}\n")


def test_dashboard_panels_have_data_and_counters_are_exact(fixture_binaries, tmp_path, bpf_stats):
    binary = fixture_binaries("child_writes")
    summary_path, events_path = tmp_path / "summary.json", tmp_path / "events.jsonl"
    script = f'{binary} {PAGES}; sleep 60 & trap "kill $!; exit 0" TERM; wait'
    prometheus: Prometheus | None = None
    with taskstats.ExitListener() as listener:
        cowtrace = subprocess.Popen(
            [
                *COWTRACE,
                "run",
                "--quiet",
                "--metrics-addr",
                "127.0.0.1:0",
                "--delayacct",
                "--interval",
                "0.25",
                "--json",
                str(summary_path),
                "--events",
                str(events_path),
                "--",
                "/bin/sh",
                "-c",
                script,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = Lines(cowtrace.stdout), Lines(cowtrace.stderr)
            url = metrics_url(stderr)
            target = re.sub(r"^http://|/metrics$", "", url)
            prometheus = Prometheus(tmp_path, target, scrape_s=1.0)
            prometheus.wait_ready()
            stdout.wait_for(r'"reaped"', timeout=60)
            facts = build.parse_lines(stdout.lines)
            child = facts.pid_of("child")
            kernel = listener.wait_for(child, timeout=EXIT_RECORD_TIMEOUT_S)
            assert kernel is not None and kernel.wpcopy_count is not None

            # The child's series, final (it was reaped), in a few consecutive scrapes.
            selector = f'{{pid="{child}"}}'
            prometheus.wait_query(
                f"count_over_time(cowtrace_copies_total{selector}[10s]) >= 3", 120
            )
            prometheus.wait_query(
                "count_over_time(cowtrace_build_info[10s]) >= 5", 120
            )  # rate() windows hold enough samples
            copies = value(prometheus.query(f"cowtrace_copies_total{selector}"))
            zero_fills = value(prometheus.query(f"cowtrace_zero_fills_total{selector}"))
            delay_copies = value(prometheus.query(f"cowtrace_delayacct_copies_total{selector}"))
            delay_s = value(prometheus.query(f"cowtrace_copy_delay_seconds_total{selector}"))
            attribution = value(prometheus.query("cowtrace_attribution_enabled")) == 1

            # Every expression of every panel returns data.
            empty = []
            for title, expr in dashboard_expressions():
                result = prometheus.query(expr)  # a PromQL error fails here
                needs_attribution = any(name in expr for name in ATTRIBUTION_METRICS)
                if any(name in expr for name in PYTHON_METRICS):
                    assert result == [], f"{title}: no CPython member, yet {expr} has data"
                elif needs_attribution and not attribution:
                    assert result == [], f"{title}: attribution is off, yet {expr} has data"
                elif not result:
                    empty.append(f"{title}: {expr}")
            assert not empty, "panels without data:\n" + "\n".join(empty)

            # promtool finds nothing to complain about in the exposition.
            checked = promtool_check(http_get(url))
            assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout
            assert not checked.stderr.strip(), checked.stderr
        finally:
            if cowtrace.poll() is None:
                cowtrace.send_signal(signal.SIGTERM)
            try:
                cowtrace.wait(timeout=30)
            finally:
                if cowtrace.poll() is None:
                    cowtrace.kill()
                    cowtrace.wait()
                if prometheus is not None:
                    prometheus.stop()
    assert cowtrace.returncode == 0, "".join(stderr.lines)

    # The counters are the kernel's exact counts: the known answer in the buffer, the same
    # totals as the summary and the detail log, and delay accounting's own count.
    summary = {p["pid"]: p for p in json.loads(summary_path.read_text())["processes"]}
    events = [e for e in read_jsonl(events_path) if e["pid"] == child]
    buffer = facts.buffers["buf"]
    in_buffer = Counter(e["kind"] for e in events if e["addr"] and buffer.contains(e["addr"]))
    assert in_buffer["copy"] == PAGES
    assert copies == summary[child]["copies"] == sum(e["kind"] == "copy" for e in events)
    assert zero_fills == summary[child]["zero_fills"]
    assert copies + zero_fills == delay_copies == kernel.wpcopy_count
    assert delay_s == pytest.approx(kernel.wpcopy_delay_total_ns / 1e9, abs=1e-9)
