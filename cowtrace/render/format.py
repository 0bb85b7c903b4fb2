"""Text for numbers, times, roles and states, shared by every renderer.

The live view, the plain lines and the final summary must never disagree about how a number is
written or which members come first, so all of that lives here, as plain strings with no rich
markup. The member-table columns are defined here too: the live view, the rich summary and the
plain-text summary draw the same cells from one list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cowtrace.model import Member, Role, Snapshot

MIB = 1024 * 1024
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(n: float) -> str:
    """``12.3 MiB``: binary units, because pages and smaps figures are binary too."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(bytes_per_second: float) -> str:
    """``4.1 MiB/s``: the same units as :func:`human_bytes`, per second."""
    return f"{human_bytes(bytes_per_second)}/s"


def mib(n: float, *, grouped: bool = True) -> str:
    """A byte count in MiB with one decimal, for columns that must line up in one unit.

    ``grouped`` adds thousands separators for people; plain lines turn it off so a value is
    one token that scripts can parse.
    """
    return f"{n / MIB:,.1f}" if grouped else f"{n / MIB:.1f}"


def count(n: int) -> str:
    """``1,234,567``: page counts get large fast and must stay readable at a glance."""
    return f"{n:,}"


def age(seconds: float) -> str:
    """``42s``, ``1m02s``, ``3h07m``, ``2d05h``: two units at most, fixed-width-ish.

    Ages are for orientation, not measurement; two units keep the column narrow.
    """
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def role_label(role: Role) -> str:
    """The word users know: a direct child of the root is a pre-fork server's *worker*."""
    return "worker" if role is Role.CHILD else role.value


def state_label(member: Member) -> str:
    """``running``, ``exec'd``, ``exit 0``, ``killed by signal 9``.

    An exec'd member is alive but no longer shares anything with the family, so it is told
    apart from ``running``: further copies from it are not expected.
    """
    if member.exited:
        return member.exit_status.describe() if member.exit_status else "exited"
    return "exec'd" if member.execs else "running"


def state_token(member: Member) -> str:
    """:func:`state_label` as one space-free token (``exit:0``, ``signal:9``) for plain lines."""
    if member.exited:
        status = member.exit_status
        if status is not None and status.signal is not None:
            return f"signal:{status.signal}"
        if status is not None and status.code is not None:
            return f"exit:{status.code}"
        return "exited"
    return "execd" if member.execs else "running"


def comm_token(comm: str) -> str:
    """A comm as one token: quoted only when it holds whitespace, quotes or ``=``.

    A comm is up to 15 arbitrary bytes; quoting keeps ``key=value`` lines splittable without
    renaming the process the user knows.
    """
    if comm and not any(c.isspace() or c in "\"'=\\" for c in comm):
        return comm
    escaped = comm.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def root_comm(snapshot: Snapshot) -> str:
    """The root's comm, or ``?`` when the root is not (yet) in the snapshot."""
    for member in snapshot.members:
        if member.pid == snapshot.root_pid:
            return member.comm
    return "?"


def ordered_members(members: Sequence[Member], root_pid: int) -> list[Member]:
    """Root first, then live members by copied bytes (most first), then exited ones.

    The members that matter most are the ones still copying; exited ones are history and go
    last, also most first. Ties break on pid so the order is stable between refreshes.
    """

    def key(m: Member) -> tuple[int, int, int]:
        group = 0 if m.pid == root_pid else (2 if m.exited else 1)
        return (group, -m.counts.copies, m.pid)

    return sorted(members, key=key)


def traced_seconds(member: Member, snapshot: Snapshot) -> float:
    """How long this member was under tracing: adopted members began before we did."""
    end = member.exit_time if member.exit_time is not None else snapshot.now
    return max(0.0, end - max(member.start_time, snapshot.started))


def mean_rate(member: Member, snapshot: Snapshot) -> float:
    """Copied bytes per traced second: the summary's rate, since the last interval's is noise."""
    seconds = traced_seconds(member, snapshot)
    return member.counts.copied_bytes / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Column:
    """One column of the member table: its header, whether it is a number, and its cell."""

    header: str
    cell: Callable[[Member, Snapshot], str]
    numeric: bool = False


def pid_label(member: Member) -> str:
    """The host pid, and beside it the pid in the member's container when it has one:
    ``4242 (ns 7)``."""
    return str(member.pid) if member.ns_pid is None else f"{member.pid} (ns {member.ns_pid})"


PID = Column("pid", lambda m, s: pid_label(m), numeric=True)
ROLE = Column("role", lambda m, s: role_label(m.role))
COMM = Column("comm", lambda m, s: m.comm)
AGE = Column("age", lambda m, s: age(m.age(s.now)), numeric=True)
COPIES = Column("copies", lambda m, s: count(m.counts.copies), numeric=True)
FILE_COPIES = Column("file copies", lambda m, s: count(m.counts.file_copies), numeric=True)
COPIED = Column("copied MiB", lambda m, s: mib(m.counts.copied_bytes), numeric=True)
RATE = Column("MiB/s", lambda m, s: "-" if m.exited else mib(m.copy_rate), numeric=True)
MEAN_RATE = Column("avg MiB/s", lambda m, s: mib(mean_rate(m, s)), numeric=True)
REUSES = Column("reuses", lambda m, s: count(m.counts.reuses), numeric=True)
ZERO_FILLS = Column("zero-fills", lambda m, s: count(m.counts.zero_fills), numeric=True)
STATE = Column("state", lambda m, s: state_label(m))
STATUS = Column("status", lambda m, s: state_label(m))

LIVE_COLUMNS: tuple[Column, ...] = (
    PID,
    ROLE,
    COMM,
    AGE,
    COPIES,
    COPIED,
    RATE,
    REUSES,
    ZERO_FILLS,
    STATE,
)
"""The live view's member table."""

LIVE_DROPPABLE: tuple[Column, ...] = (ZERO_FILLS, AGE, REUSES)
"""Live columns given up, in this order, when the terminal is too narrow for all of them:
the header still shows the family's reuses and zero-fills, and the pid, comm and copies
matter more than any of these."""

SUMMARY_COLUMNS: tuple[Column, ...] = (
    PID,
    ROLE,
    COMM,
    AGE,
    COPIES,
    FILE_COPIES,
    COPIED,
    MEAN_RATE,
    REUSES,
    ZERO_FILLS,
    STATUS,
)
"""The final table: file copies added, and the mean rate over each member's traced life in
place of the last interval's rate (which is zero once everything has stopped)."""


def summary_droppable(snapshot: Snapshot) -> list[Column]:
    """Summary columns to give up, in order, on a terminal too narrow for all of them.

    First those showing only zeros (losing nothing: the totals line still says "0 reuses"),
    then the secondary ones. The plain summary and the JSON always keep every column.
    """
    totals = snapshot.totals
    zero = [
        column
        for column, total in (
            (FILE_COPIES, totals.file_copies),
            (ZERO_FILLS, totals.zero_fills),
            (REUSES, totals.reuses),
        )
        if total == 0
    ]
    rest = [c for c in (AGE, MEAN_RATE, FILE_COPIES, ZERO_FILLS, REUSES) if c not in zero]
    return zero + rest


def member_cells(columns: Sequence[Column], member: Member, snapshot: Snapshot) -> list[str]:
    """One table row as strings, in column order."""
    return [column.cell(member, snapshot) for column in columns]


def more_members_line(hidden: Sequence[Member]) -> str:
    """``… 12 more members (9 alive, 3 exited)``: what a capped table left out."""
    gone = sum(1 for m in hidden if m.exited)
    noun = "member" if len(hidden) == 1 else "members"
    return f"… {len(hidden)} more {noun} ({len(hidden) - gone} alive, {gone} exited)"


def text_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """A fixed-width plain-text table: numbers right-aligned, text left-aligned.

    Used where there is no terminal, so it must line up with spaces alone.
    """
    headers = [c.header for c in columns]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if column.numeric else cell.ljust(width)
            for column, cell, width in zip(columns, cells, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]
