"""What the exporter reads besides the tracer's counters: smaps_rollup, delay accounting and
the BPF programs' own run time.

Each sampler reads the kernel's bookkeeping as it is; none of them derives a number.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from cowtrace.host import smaps, taskstats

BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

# smaps_rollup field -> (metric key, extra label value)
ROLLUP_GAUGES = {
    "Rss": ("rss_bytes", ""),
    "Pss": ("pss_bytes", ""),
    "Private_Clean": ("private_memory_bytes", "clean"),
    "Private_Dirty": ("private_memory_bytes", "dirty"),
    "Shared_Clean": ("shared_memory_bytes", "clean"),
    "Shared_Dirty": ("shared_memory_bytes", "dirty"),
}


def rollup_gauges(pid: int) -> dict[tuple[str, str], float]:
    """The member's memory from /proc/PID/smaps_rollup; empty once it has gone."""
    try:
        sizes = smaps.read_rollup(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return {key: float(sizes.get(field, 0)) for field, key in ROLLUP_GAUGES.items()}


@dataclass(frozen=True)
class CopyDelay:
    """Delay accounting's view of one process: passes through the copy routine, and the time."""

    count: int
    seconds: float


class DelayBook:
    """Per-process `wpcopy_count` / `wpcopy_delay_total`: queried while a member lives, taken
    from the kernel's exit record once it has exited (a reaped task cannot be queried, and its
    last moments are exactly the exit-time copies worth seeing)."""

    def __init__(self) -> None:
        self._listener = taskstats.ExitListener()
        self._final: dict[int, CopyDelay] = {}
        self._live: dict[int, CopyDelay] = {}

    def open(self) -> None:
        self._listener.open()

    def close(self) -> None:
        self._listener.close()

    def sample(self, alive: list[int], exited: list[int]) -> dict[int, CopyDelay]:
        """The latest figure of every pid asked about that has one."""
        for pid, record in self._listener.take_group_exits(exited).items():
            if record.wpcopy_count is not None:
                self._final[pid] = CopyDelay(
                    record.wpcopy_count, (record.wpcopy_delay_total_ns or 0) / 1e9
                )
        out: dict[int, CopyDelay] = {}
        for pid in alive:
            with contextlib.suppress(taskstats.TaskstatsError, OSError):
                record = taskstats.query_tgid(pid)
                if record.wpcopy_count is not None:
                    self._live[pid] = CopyDelay(
                        record.wpcopy_count, (record.wpcopy_delay_total_ns or 0) / 1e9
                    )
            if pid in self._live:
                out[pid] = self._live[pid]
        for pid in exited:
            figure = self._final.get(pid) or self._live.get(pid)
            if figure is not None:
                out[pid] = figure
        return out

    def forget(self, pids: list[int]) -> None:
        for pid in pids:
            self._final.pop(pid, None)
            self._live.pop(pid, None)


def bpf_stats_enabled() -> bool:
    try:
        return BPF_STATS_SYSCTL.read_text().strip() == "1"
    except OSError:
        return False


_FDINFO_FIELD = re.compile(r"^(run_time_ns|run_cnt):\s+(\d+)$", re.MULTILINE)


def program_run_ns(fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per program: (nanoseconds spent running, runs), from /proc/self/fdinfo of its fd.

    The kernel counts these only while kernel.bpf_stats_enabled=1."""
    out: dict[str, tuple[int, int]] = {}
    for name, fd in fds.items():
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(_FDINFO_FIELD.findall(text))
        if "run_time_ns" in fields:
            out[name] = (int(fields["run_time_ns"]), int(fields.get("run_cnt", 0)))
    return out


def program_run_stats(fds: dict[str, int]) -> dict[str, tuple[float, int]]:
    """Per program: (seconds spent running, runs); see program_run_ns."""
    return {name: (ns / 1e9, runs) for name, (ns, runs) in program_run_ns(fds).items()}
