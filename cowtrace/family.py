"""The user-space picture of a traced family: who is in it, their roles, lives and counts.

The kernel decides membership and keeps the counters; this module names the members (comm,
parent, role), dates their lives and folds the kernel's counters into Member objects.
"""

from __future__ import annotations

from collections.abc import Callable

from cowtrace.host import procfs, rootfs
from cowtrace.kernel.abi import PE_EXEC, PE_EXIT, PE_FORK, PE_FREE
from cowtrace.kernel.tracer import MemberState, ProcRecord
from cowtrace.model import Counts, ExitStatus, Member, Role


def exit_status_of(exit_code: int, exit_signal: int) -> ExitStatus:
    """exit_group()'s code when the process called it, else the fatal signal it got."""
    if exit_code >= 0:
        return ExitStatus(code=exit_code)
    if exit_signal:
        return ExitStatus(signal=exit_signal)
    return ExitStatus(code=0)  # the last thread returned through pthread_exit: status 0


class Family:
    """Members of one traced root, keyed by pid."""

    def __init__(self, root_pid: int, ns_pid: Callable[[int], int | None] = rootfs.ns_pid) -> None:
        self.root_pid = root_pid
        # A member's pid in its container: read from /proc when it is seen first (at its fork
        # record: a child gone before that record is handled shows none).
        self._ns_pid = ns_pid
        self.members: dict[int, Member] = {}
        self.final: set[int] = set()  # pids whose counts will not change any more

    # ---- who is in it --------------------------------------------------------------------
    def role_for(self, pid: int, ppid: int) -> Role:
        if pid == self.root_pid:
            return Role.ROOT
        return Role.CHILD if ppid == self.root_pid else Role.DESCENDANT

    def adopt(self, stat: procfs.ProcStat, *, adopted: bool) -> Member:
        """Add a process found in /proc (the root, or a member that existed at attach)."""
        member = self.members.get(stat.pid)
        if member is None:
            member = Member(
                pid=stat.pid,
                ppid=stat.ppid,
                comm=stat.comm,
                role=self.role_for(stat.pid, stat.ppid),
                start_time=stat.start_monotonic(),
                adopted=adopted,
                ns_pid=self._container_pid(stat.pid),
            )
            self.members[stat.pid] = member
        return member

    def _container_pid(self, pid: int) -> int | None:
        """Its pid in its own pid namespace when that differs from the host's."""
        found = self._ns_pid(pid)
        return found if found != pid else None

    def apply(self, record: ProcRecord) -> None:
        """Fold one lifecycle record from the kernel into the picture."""
        ts = record.ts_ns / 1e9
        member = self.members.get(record.pid)
        if record.type == PE_FORK:
            if member is None:
                self.members[record.pid] = Member(
                    pid=record.pid,
                    ppid=record.ppid,
                    comm=record.comm,
                    role=self.role_for(record.pid, record.ppid),
                    start_time=ts,
                    ns_pid=self._container_pid(record.pid),
                )
            return
        if member is None:
            return
        if record.type == PE_EXEC:
            member.comm = record.comm or member.comm
            member.execs += 1
        elif record.type == PE_EXIT:
            member.exit_time = ts
            member.exit_status = exit_status_of(record.exit_code, record.exit_signal)
        elif record.type == PE_FREE:
            if member.exit_time is None:
                member.exit_time = ts
            member.exit_status = exit_status_of(record.exit_code, record.exit_signal)
            self.final.add(record.pid)

    # ---- counts ----------------------------------------------------------------------------
    def update_counts(self, states: dict[int, MemberState], interval: float) -> None:
        """Take the kernel's counters; rates are over the time since the previous update."""
        for pid, state in states.items():
            member = self.members.get(pid)
            if member is None:
                continue
            if interval > 0:
                delta = state.counts.copied_bytes - member.counts.copied_bytes
                member.copy_rate = max(0.0, delta / interval)
            member.counts = state.counts
        for member in self.members.values():
            if member.pid not in states and member.exited:
                member.copy_rate = 0.0

    def add_counts(self, pid: int, extra: Counts) -> None:
        """Counts user space accounted itself (episodes still open when tracing stopped)."""
        member = self.members.get(pid)
        if member is not None:
            member.counts = member.counts + extra

    def totals(self) -> Counts:
        total = Counts()
        for member in self.members.values():
            total = total + member.counts
        return total

    def ordered(self) -> list[Member]:
        return sorted(self.members.values(), key=lambda m: (m.role != Role.ROOT, m.start_time))
