"""What tracing cost, as a real `--json` summary and text summary report it (issue 12).

No figure of a real run can be known in advance (CPU time, memory): the test checks the
structure and types of the summary's "tracer" object, and every relation that holds between
its fields and the rest of the summary, with kernel.bpf_stats_enabled on and off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowtrace.metrics.samplers import BPF_STATS_SYSCTL
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import run_cowtrace

build = load_build()

FLOATS = ("cpu_s", "tracing_cpu_s", "tracing_cpu_percent", "events_per_second")
INTS = ("rss_bytes", "peak_rss_bytes", "events")


@pytest.fixture(params=["1", "0"], ids=["bpf_stats_on", "bpf_stats_off"])
def bpf_stats(request):
    before = BPF_STATS_SYSCTL.read_text().strip()
    BPF_STATS_SYSCTL.write_text(f"{request.param}\n")
    yield request.param == "1"
    BPF_STATS_SYSCTL.write_text(f"{before}\n")


def test_summary_reports_what_tracing_cost(fixture_binaries, tmp_path: Path, bpf_stats: bool):
    summary_path = tmp_path / "summary.json"
    binary = fixture_binaries("child_writes")
    result = run_cowtrace(
        [
            "run",
            "--plain",
            "--json",
            str(summary_path),
            "--",
            str(binary),
            *build.FIXTURES["child_writes"],
        ]
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(summary_path.read_text())
    tracer, totals = summary["tracer"], summary["totals"]

    for key in FLOATS:
        assert isinstance(tracer[key], float | int), key
        assert tracer[key] >= 0, key
    for key in INTS:
        assert isinstance(tracer[key], int), key
    # The fixture's child copies 256 pages: events are the totals' sum, and their rate is
    # taken over the summary's own duration.
    assert tracer["events"] == totals["copies"] + totals["reuses"] + totals["zero_fills"]
    assert tracer["events"] >= 256
    duration = summary["duration_s"]
    assert tracer["events_per_second"] == round(tracer["events"] / duration, 3)
    assert tracer["tracing_cpu_s"] <= tracer["cpu_s"]  # compiling the program came first
    assert tracer["tracing_cpu_percent"] == pytest.approx(
        100 * tracer["tracing_cpu_s"] / duration, abs=1e-3
    )
    assert 0 < tracer["rss_bytes"] <= tracer["peak_rss_bytes"]

    programs = tracer["bpf_programs"]
    if bpf_stats:
        assert tracer["bpf_stats"] == "on"
        assert programs, "no program run time read"
        assert tracer["bpf_run_ns"] == sum(p["run_ns"] for p in programs.values())
        assert tracer["bpf_runs"] == sum(p["runs"] for p in programs.values())
        # Every event passed through at least one of the programs (a fault or an allocation).
        assert tracer["bpf_runs"] >= tracer["events"]
        assert tracer["bpf_ns_per_event"] == round(tracer["bpf_run_ns"] / tracer["events"], 1)
        assert "ns per event" in result.stderr
    else:
        assert tracer["bpf_stats"] == "off"
        assert (tracer["bpf_run_ns"], tracer["bpf_runs"], tracer["bpf_ns_per_event"]) == (
            None,
            None,
            None,
        )
        assert programs == {}
        assert "sysctl -w kernel.bpf_stats_enabled=1" in result.stderr
    cost_line = [line for line in result.stderr.splitlines() if line.startswith("cost: ")]
    assert len(cost_line) == 1, result.stderr
    assert f"{tracer['tracing_cpu_s']:.2f} s CPU while tracing" in cost_line[0]
