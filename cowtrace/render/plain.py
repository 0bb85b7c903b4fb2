"""Plain periodic lines for when stdout is not a terminal (pipes, log files, CI).

One ``key=value`` line per interval for the family, then one indented line per member that
changed since the previous interval, then (with attribution, when they changed) the top
mappings, allocations and writers and the exit-time copies as ``  top mapping=...``,
``  top allocation=...``, ``  top writer=...``, ``  exit_copies pid=...`` lines.
The format is a contract with people's grep and awk: add fields at the end, never rename or
reorder them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from cowtrace.model import Member, Snapshot
from cowtrace.render import attribution as attr
from cowtrace.render import format as fmt

PLAIN_TOP = 3  # attribution entries per kind in the periodic lines

_MemberState = tuple[int, int, int, str, str]


def family_line(snapshot: Snapshot, wall_time: float) -> str:
    """``HH:MM:SS root=PID members=A alive/E exited copies=N (X MiB, R MiB/s) ...``."""
    totals = snapshot.totals
    return (
        f"{time.strftime('%H:%M:%S', time.localtime(wall_time))}"
        f" root={snapshot.root_pid}"
        f" members={len(snapshot.alive)} alive/{len(snapshot.exited)} exited"
        f" copies={totals.copies}"
        f" ({fmt.mib(totals.copied_bytes, grouped=False)} MiB,"
        f" {fmt.mib(snapshot.copy_rate, grouped=False)} MiB/s)"
        f" reuses={totals.reuses}"
        f" zero_fills={totals.zero_fills}"
        f" lost={snapshot.lost_events}"
    )


def member_line(member: Member, new_copies: int) -> str:
    """``  pid=P role=R comm=C +copies=D copies=T reuses=T zero_fills=T state=S``, with
    ``ns_pid=N`` after the pid for a member in a container."""
    counts = member.counts
    return (
        f"  pid={member.pid}"
        f"{'' if member.ns_pid is None else f' ns_pid={member.ns_pid}'}"
        f" role={fmt.role_label(member.role)}"
        f" comm={fmt.comm_token(member.comm)}"
        f" +copies={new_copies}"
        f" copies={counts.copies}"
        f" reuses={counts.reuses}"
        f" zero_fills={counts.zero_fills}"
        f" state={fmt.state_token(member)}"
    )


def _state(member: Member) -> _MemberState:
    counts = member.counts
    return (counts.copies, counts.reuses, counts.zero_fills, fmt.state_token(member), member.comm)


class PlainReporter:
    """Writes the lines for each snapshot and remembers what it last reported per member.

    A member gets a line when it is new, when any of its counts moved, or when its state
    or its name changed (exited, exec'd: a second exec keeps the state "execd" but names
    another program, whose record may be read an interval after the counts that moved with
    it), so a quiet family produces one line per interval and a log stays readable for
    hours. ``clock`` gives the wall time stamped on each line.
    """

    def __init__(
        self, file: TextIO | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.file = file if file is not None else sys.stdout
        self._clock = clock
        # keyed on (pid, start time): a recycled pid is a new member, not a change
        self._last: dict[tuple[int, float], _MemberState] = {}
        self._last_attribution: list[str] = []

    def update(self, snapshot: Snapshot) -> None:
        """Write this interval's lines and flush, so a pipe's reader sees them at once."""
        lines = [family_line(snapshot, self._clock())]
        for member in fmt.ordered_members(snapshot.members, snapshot.root_pid):
            key = (member.pid, member.start_time)
            now = _state(member)
            before = self._last.get(key)
            if now != before:
                lines.append(member_line(member, now[0] - (before[0] if before else 0)))
                self._last[key] = now
        top = attr.plain_lines(snapshot, PLAIN_TOP)
        if top != self._last_attribution:
            lines.extend(top)
            self._last_attribution = top
        self.file.write("\n".join(lines) + "\n")
        self.file.flush()
