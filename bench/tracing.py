"""Attach `cowtrace PID` to a benchmark's process the way a user does, and read what it found.

Shared by the storm benchmarks (bench/storm.py, bench/interleaved.py): the tracer is started
on a waiting parent, counted as attached at its first periodic line, and its `--json` summary
is read after the root exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident memory of a live process now: (anonymous, file-backed), from /proc/PID/status.

    The file-backed part is mostly libbcc's and LLVM's code, shared with every other user of
    those libraries; the anonymous part is cowtrace's own."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("RssAnon", 0.0), values.get("RssFile", 0.0)


@dataclass
class TraceResult:
    """What one traced run's cowtrace reported and cost."""

    lost: int
    top_copies: int  # copies of the member that copied most (the storm's child)
    events: int
    cpu_after_attach_s: float
    peak_rss_mib: float
    attach_s: float


class AttachedTracer:
    """`cowtrace PID --plain --json FILE [options]`, attached and counting once constructed."""

    def __init__(self, pid: int, options: list[str], summary_path: Path) -> None:
        self.summary_path = summary_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cowtrace", str(pid), "--plain", "--interval", "0.5",
             "--json", str(summary_path), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = self.process.stdout.readline()  # the first periodic line: attached, counting
        assert first, self.process.stderr.read()
        self.cpu_at_attach = process_cpu_s(self.process.pid)

    def rss_now(self) -> tuple[float, float]:
        return rss_mib(self.process.pid)

    def finish(self) -> TraceResult:
        """Wait for cowtrace to end on its root's exit; its summary and its own costs."""
        self.process.stdout.read()  # keep the pipe drained until it ends
        _, status, usage = os.wait4(self.process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code == 0, f"cowtrace exited {code}: {self.process.stderr.read()}"
        summary = json.loads(self.summary_path.read_text())
        totals = summary["totals"]
        return TraceResult(
            lost=totals["lost_events"],
            top_copies=max(p["copies"] for p in summary["processes"]),
            events=totals["copies"] + totals["reuses"] + totals["zero_fills"],
            cpu_after_attach_s=usage.ru_utime + usage.ru_stime - self.cpu_at_attach,
            peak_rss_mib=usage.ru_maxrss / 1024,
            attach_s=summary["tracer"]["attach_s"],
        )
