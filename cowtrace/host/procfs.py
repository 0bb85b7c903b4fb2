"""What /proc says about processes: identity, parentage, descendants at attach time, and
the fields of /proc/PID/status."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PF_KTHREAD = 0x00200000
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat cowtrace uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    start_ticks: int  # clock ticks after boot

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    def start_monotonic(self) -> float:
        """Start time on the monotonic clock (boot-relative, like the kernel's ktime)."""
        started_since_boot = self.start_ticks / _CLOCK_TICKS
        boot_offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
        return started_since_boot - boot_offset


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat; comm may hold spaces and parentheses, so split at the last ')'."""
    head, _, rest = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = rest.split()
    # fields[0] is field 3 (state); field N is fields[N - 3].
    return ProcStat(
        pid=int(pid_text),
        comm=comm,
        state=fields[0],
        ppid=int(fields[1]),
        flags=int(fields[6]),
        start_ticks=int(fields[19]),
    )


def status_field(text: str, name: str) -> str | None:
    """The value of the field `name` ("VmRSS", "CapEff") in the text of /proc/PID/status,
    stripped; None when the kernel did not print it."""
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key == name:
            return value.strip()
    return None


def read_stat(pid: int) -> ProcStat | None:
    """The process' stat, or None when it does not exist (any more)."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None


def all_processes() -> list[ProcStat]:
    """Every process visible in /proc right now (threads excluded)."""
    found = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                found.append(stat)
    return found


def descendants(root: int, processes: list[ProcStat] | None = None) -> list[ProcStat]:
    """Every process below `root` in the parent tree, parents before children."""
    processes = all_processes() if processes is None else processes
    children: dict[int, list[ProcStat]] = {}
    for stat in processes:
        children.setdefault(stat.ppid, []).append(stat)
    ordered: list[ProcStat] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop(0)
        for child in sorted(children.get(parent, []), key=lambda s: s.pid):
            ordered.append(child)
            frontier.append(child.pid)
    return ordered
