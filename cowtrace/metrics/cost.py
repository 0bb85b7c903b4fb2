"""What tracing cost: cowtrace's own CPU and memory, and its BPF programs' run time.

An operator asked to run cowtrace on a production host must be able to show a reviewer the
number.  The readings are the kernel's own books, taken at the start of tracing and at its end:

- CPU: `getrusage(RUSAGE_SELF)`, user + system time of cowtrace's process, every thread
  included (a `run` command is a child: not included);
- memory: `VmRSS` and `VmHWM` (peak) of /proc/self/status.  bcc compiles the program in
  process, so the peak is set at start-up; the current figure is what stays;
- BPF programs: `run_time_ns` and `run_cnt` from the fdinfo of each program cowtrace loaded
  (`cowtrace.metrics.samplers.program_run_ns`), counted by the kernel only while
  `kernel.bpf_stats_enabled=1` (off by default: it costs two clock reads per program run).
  The programs run in the context of every process that faults or allocates a page, members
  or not, so their time per event is what one classified event cost the whole host.

Derived figures (`cost_figures`) are computed from these readings and the caller's duration
and event count, the same way for the --json summary, the text summary and the metrics.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cowtrace.host import procfs

BPF_STATS_ON = "sysctl -w kernel.bpf_stats_enabled=1"  # how to turn the run-time books on


@dataclass(frozen=True)
class OwnUsage:
    """cowtrace's own process at one moment."""

    cpu_s: float = 0.0  # user + system time: every figure reads only their sum
    rss_bytes: int = 0
    peak_rss_bytes: int = 0


def _status_kib(text: str, name: str) -> int:
    value = procfs.status_field(text, name)  # "123456 kB"
    return int(value.split()[0]) if value else 0


def own_usage() -> OwnUsage:
    """This process' CPU time (all threads) and resident memory, now and at its peak."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    return OwnUsage(
        cpu_s=usage.ru_utime + usage.ru_stime,
        rss_bytes=_status_kib(status, "VmRSS") * 1024,
        peak_rss_bytes=_status_kib(status, "VmHWM") * 1024,
    )


@dataclass(frozen=True)
class TracerCost:
    """The readings of one tracing session: at the start of its counting and at its end.

    `bpf` maps each program to (run_time_ns, run_cnt) read at the end, or is None when
    kernel.bpf_stats_enabled was 0 then; `bpf_stats_at_start` says whether it was on when the
    programs were loaded (their books start at load time)."""

    start: OwnUsage
    end: OwnUsage
    bpf: dict[str, tuple[int, int]] | None = None
    bpf_stats_at_start: bool = False

    @property
    def bpf_stats(self) -> str:
        """ "on" (counted for the whole session), "off", or "partial" (switched meanwhile)."""
        at_end = self.bpf is not None
        if at_end and self.bpf_stats_at_start:
            return "on"
        if not at_end and not self.bpf_stats_at_start:
            return "off"
        return "partial"


@dataclass(frozen=True)
class CostFigures:
    """What a reviewer reads: derived from one TracerCost, a duration and an event count."""

    cpu_s: float  # since cowtrace started: compiling the BPF program included
    tracing_cpu_s: float  # from the start of counting to the end
    tracing_cpu_percent: float | None  # of one core, over the duration
    rss_bytes: int
    peak_rss_bytes: int
    events: int
    events_per_second: float | None
    bpf_stats: str
    bpf_run_ns: int | None
    bpf_runs: int | None
    bpf_ns_per_event: float | None  # only when counted for the whole session
    bpf_programs: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The fields the --json summary's "tracer" object gains."""
        return {
            "cpu_s": round(self.cpu_s, 6),
            "tracing_cpu_s": round(self.tracing_cpu_s, 6),
            "tracing_cpu_percent": _rounded(self.tracing_cpu_percent, 4),
            "rss_bytes": self.rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "events": self.events,
            "events_per_second": _rounded(self.events_per_second, 3),
            "bpf_stats": self.bpf_stats,
            "bpf_run_ns": self.bpf_run_ns,
            "bpf_runs": self.bpf_runs,
            "bpf_ns_per_event": _rounded(self.bpf_ns_per_event, 1),
            "bpf_programs": self.bpf_programs,
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def cost_figures(cost: TracerCost, duration_s: float, events: int) -> CostFigures:
    """The figures of a session of `duration_s` seconds that classified `events` events."""
    tracing_cpu_s = max(0.0, cost.end.cpu_s - cost.start.cpu_s)
    bpf_run_ns = bpf_runs = None
    programs: dict[str, dict[str, int]] = {}
    if cost.bpf is not None:
        programs = {
            name: {"run_ns": run_ns, "runs": runs}
            for name, (run_ns, runs) in sorted(cost.bpf.items())
        }
        bpf_run_ns = sum(run_ns for run_ns, _ in cost.bpf.values())
        bpf_runs = sum(runs for _, runs in cost.bpf.values())
    whole = cost.bpf_stats == "on"
    return CostFigures(
        cpu_s=cost.end.cpu_s,
        tracing_cpu_s=tracing_cpu_s,
        tracing_cpu_percent=100.0 * tracing_cpu_s / duration_s if duration_s > 0 else None,
        rss_bytes=cost.end.rss_bytes,
        peak_rss_bytes=cost.end.peak_rss_bytes,
        events=events,
        events_per_second=events / duration_s if duration_s > 0 else None,
        bpf_stats=cost.bpf_stats,
        bpf_run_ns=bpf_run_ns,
        bpf_runs=bpf_runs,
        bpf_ns_per_event=(
            bpf_run_ns / events if whole and bpf_run_ns is not None and events > 0 else None
        ),
        bpf_programs=programs,
    )
