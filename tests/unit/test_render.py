"""Renderers on synthetic snapshots: the numbers, units, order and caps users rely on."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.model import Counts, ExitStatus, Member, Role, Snapshot
from cowtrace.render import LiveView, PlainReporter, render_summary, summary_lines
from cowtrace.render import format as fmt

MIB = 1024 * 1024


def member(
    pid: int,
    copies: int = 0,
    *,
    role: Role = Role.CHILD,
    comm: str | None = None,
    exited: ExitStatus | None = None,
    rate: float = 0.0,
    execs: int = 0,
    start: float = 0.0,
    reuses: int = 0,
    zero_fills: int = 0,
    file_copies: int = 0,
) -> Member:
    return Member(
        pid=pid,
        ppid=100,
        comm=comm or f"w{pid}",
        role=role,
        start_time=start,
        exit_time=50.0 if exited else None,
        exit_status=exited,
        execs=execs,
        counts=Counts(copies=copies, file_copies=file_copies, reuses=reuses, zero_fills=zero_fills),
        copy_rate=rate,
    )


def snapshot(members: list[Member], *, lost: int = 0, reason: str = "") -> Snapshot:
    totals = Counts()
    for m in members:
        totals = totals + m.counts
    return Snapshot(
        root_pid=100,
        started=0.0,
        now=62.5,
        members=members,
        totals=totals,
        lost_events=lost,
        copy_rate=4.1 * MIB,
        ended=bool(reason),
        end_reason=reason,
    )


def family(lost: int = 0) -> Snapshot:
    """A root, three live workers (one idle), a shell that exec'd, two exited workers."""
    return snapshot(
        [
            member(103, 0),  # a member with 0 counts
            member(102, 5000, exited=ExitStatus(signal=9)),
            member(101, 2560, rate=1.5 * MIB, reuses=12, zero_fills=3, comm="demo-worker-1"),
            member(100, 7, role=Role.ROOT, comm="demo-master"),
            member(105, 9000, rate=3.2 * MIB, file_copies=40, comm="demo-worker-2"),
            member(106, 1, role=Role.DESCENDANT, execs=1, comm="sh"),
            member(104, 10, exited=ExitStatus(code=0)),
        ],
        lost=lost,
        reason="root exited",
    )


def record(width: int = 120, height: int = 40) -> Console:
    return Console(record=True, width=width, height=height, file=io.StringIO())


def live_text(snap: Snapshot, width: int = 120, height: int = 40) -> str:
    console = record(width, height)
    console.print(LiveView(console).render(snap))
    return console.export_text()


def row_pids(text: str) -> list[int]:
    """The pids of the table rows in ``text``, top to bottom."""
    pattern = r"^\s*(\d+)\s+(?:root|worker|descendant)\b"
    return [int(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE)]


def rows(text: str) -> dict[int, list[str]]:
    """Each table row's words, by pid."""
    return {
        int(line.split()[0]): line.split()
        for line in text.splitlines()
        if re.match(r"^\s*\d+\s+(?:root|worker|descendant)\b", line)
    }


# --- format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (PAGE_SIZE, "4.0 KiB"),
        (int(12.3 * MIB), "12.3 MiB"),
        (50_000_000 * PAGE_SIZE, "190.7 GiB"),
        (2**62, "4.0 EiB"),
        (2**72, "4096.0 EiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert fmt.human_bytes(n) == text


def test_rates_mib_and_counts() -> None:
    assert fmt.human_rate(4.1 * MIB) == "4.1 MiB/s"
    assert fmt.human_rate(0) == "0 B/s"
    assert fmt.mib(50_000_000 * PAGE_SIZE) == "195,312.5"
    assert fmt.mib(50_000_000 * PAGE_SIZE, grouped=False) == "195312.5"
    assert fmt.count(1234567) == "1,234,567"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (62, "1m02s"),
        (3599, "59m59s"),
        (3 * 3600 + 7 * 60, "3h07m"),
        (2 * 86400 + 5 * 3600, "2d05h"),
        (-1, "0s"),
    ],
)
def test_age(seconds: float, text: str) -> None:
    assert fmt.age(seconds) == text


def test_states_roles_and_comm_tokens() -> None:
    assert fmt.state_label(member(1)) == "running"
    assert fmt.state_label(member(1, execs=1)) == "exec'd"
    assert fmt.state_label(member(1, exited=ExitStatus(code=0))) == "exit 0"
    assert fmt.state_label(member(1, exited=ExitStatus(signal=9))) == "killed by signal 9"
    assert fmt.state_token(member(1, exited=ExitStatus(signal=9))) == "signal:9"
    assert fmt.state_token(member(1, exited=ExitStatus(code=3))) == "exit:3"
    assert fmt.state_token(member(1, execs=2)) == "execd"
    assert fmt.role_label(Role.CHILD) == "worker"
    assert fmt.role_label(Role.DESCENDANT) == "descendant"
    assert fmt.comm_token("demo-worker-1") == "demo-worker-1"
    assert fmt.comm_token("my prog") == '"my prog"'
    assert fmt.comm_token('a"b') == '"a\\"b"'
    assert fmt.comm_token("") == '""'


def test_order_root_then_alive_by_copies_then_exited() -> None:
    snap = family()
    ordered = [m.pid for m in fmt.ordered_members(snap.members, snap.root_pid)]
    assert ordered == [100, 105, 101, 106, 103, 102, 104]


# --- live -----------------------------------------------------------------------------------


def test_live_header_and_rows() -> None:
    text = live_text(family())
    lines = text.splitlines()
    assert "root 100 demo-master" in lines[0]
    assert "members 5 alive, 2 exited" in lines[0]
    assert "elapsed 1m02s" in lines[0]
    # 7 + 5000 + 2560 + 9000 + 1 + 10 copies
    assert "copied 64.8 MiB in 16,578 copies" in lines[1]
    assert "rate 4.1 MiB/s" in lines[1]
    assert "reuses 12" in lines[1] and "zero-fills 3" in lines[1]
    assert "lost" not in text
    assert row_pids(text) == [100, 105, 101, 106, 103, 102, 104]

    row = rows(text)
    assert row[101] == [
        "101",
        "worker",
        "demo-worker-1",
        "1m02s",
        "2,560",
        "10.0",
        "1.5",
        "12",
        "3",
        "running",
    ]
    assert row[103] == ["103", "worker", "w103", "1m02s", "0", "0.0", "0.0", "0", "0", "running"]
    assert row[102][-4:] == ["killed", "by", "signal", "9"]
    assert row[102][6] == "-"  # no rate for an exited member
    assert row[104][-2:] == ["exit", "0"]
    assert row[106][-1] == "exec'd"


def test_live_numbers_are_right_aligned() -> None:
    text = live_text(family())
    header = text.splitlines()[3]
    rows = text.splitlines()[5:]
    end = header.index("copies") + len("copies")
    assert all(line[end - 1] != " " for line in rows)  # every copies cell ends under the header


def test_live_lost_events_in_warning_colour() -> None:
    console = Console(
        record=True,
        width=120,
        height=40,
        file=io.StringIO(),
        color_system="standard",
        force_terminal=True,
    )
    console.print(LiveView(console).render(family(lost=1234)))
    assert "lost 1,234 detail events" in console.export_text(clear=False)
    styled = console.export_text(styles=True)
    assert "\x1b[1;33mlost 1,234 detail events" in styled


def test_live_caps_rows_to_terminal_height() -> None:
    members = [member(100, 1, role=Role.ROOT)]
    members += [member(200 + i, 1000 - i) for i in range(40)]
    members += [member(300 + i, 5, exited=ExitStatus(code=0)) for i in range(10)]
    text = live_text(snapshot(members), height=20)
    lines = text.splitlines()
    assert len(lines) <= 20
    pids = row_pids(text)
    # header 2 + blank 1 + table head 2 + rows + cap line 1 = 20
    assert len(pids) == 14
    assert pids[:3] == [100, 200, 201]  # root, then the biggest copiers
    assert lines[-1] == "… 37 more members (27 alive, 10 exited)"


def test_live_tiny_terminal_still_shows_root_and_cap() -> None:
    members = [member(100, 1, role=Role.ROOT), member(200, 5), member(201, 4)]
    text = live_text(snapshot(members), height=3)
    assert row_pids(text) == [100]
    assert text.splitlines()[-1] == "… 2 more members (2 alive, 0 exited)"


def test_live_huge_numbers() -> None:
    snap = snapshot([member(100, role=Role.ROOT), member(101, 50_000_000, rate=2**40)])
    text = live_text(snap)
    assert "copied 190.7 GiB in 50,000,000 copies" in text
    assert "50,000,000" in text and "195,312.5" in text and "1,048,576.0" in text


def test_live_narrow_terminal_drops_minor_columns_before_cutting_names() -> None:
    text = live_text(family(), width=80)
    header = next(line for line in text.splitlines() if line.startswith("pid")).split()
    assert "zero-fills" not in header
    assert header[:3] == ["pid", "role", "comm"]
    assert "demo-worker-2" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    # header items wrap whole, never between a label and its number
    assert any(line.startswith("zero-fills 3") for line in text.splitlines())


def test_live_view_context_manager_updates() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, height=40, force_terminal=True, color_system=None)
    with LiveView(console) as view:
        view.update(snapshot([member(100, 3, role=Role.ROOT)]))
        view.update(family())
    written = out.getvalue()
    assert "demo-worker-2" in written
    assert "16,578 copies" in written


def test_live_view_not_transient_leaves_final_frame_on_a_file() -> None:
    console = record()
    with LiveView(console, transient=False) as view:
        view.update(family())
    assert "16,578 copies" in console.export_text()


# --- plain ----------------------------------------------------------------------------------


class FlushCounter(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_plain_lines_report_only_changed_members() -> None:
    out = FlushCounter()
    wall = 1_700_000_000.0
    reporter = PlainReporter(out, clock=lambda: wall)
    stamp = time.strftime("%H:%M:%S", time.localtime(wall))

    root = member(100, 7, role=Role.ROOT, comm="demo-master")
    worker = member(101, 2560, rate=1.5 * MIB, reuses=12, comm="my prog")
    quiet = member(102, 0)
    reporter.update(snapshot([root, worker, quiet], lost=2))
    assert out.getvalue().splitlines() == [
        f"{stamp} root=100 members=3 alive/0 exited copies=2567 (10.0 MiB, 4.1 MiB/s)"
        " reuses=12 zero_fills=0 lost=2",
        "  pid=100 role=root comm=demo-master +copies=7 copies=7 reuses=0 zero_fills=0"
        " state=running",
        '  pid=101 role=worker comm="my prog" +copies=2560 copies=2560 reuses=12 zero_fills=0'
        " state=running",
        "  pid=102 role=worker comm=w102 +copies=0 copies=0 reuses=0 zero_fills=0 state=running",
    ]
    assert out.flushes == 1

    out.seek(0)
    out.truncate()
    worker.counts.copies += 100
    reporter.update(snapshot([root, worker, quiet], lost=2))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1] == (
        '  pid=101 role=worker comm="my prog" +copies=100 copies=2660 reuses=12 zero_fills=0'
        " state=running"
    )

    out.seek(0)
    out.truncate()
    quiet.exit_time, quiet.exit_status = 60.0, ExitStatus(signal=9)
    reporter.update(snapshot([root, worker, quiet]))
    lines = out.getvalue().splitlines()
    assert "members=2 alive/1 exited" in lines[0] and lines[0].endswith("lost=0")
    assert lines[1:] == [
        "  pid=102 role=worker comm=w102 +copies=0 copies=0 reuses=0 zero_fills=0 state=signal:9"
    ]

    out.seek(0)
    out.truncate()
    reporter.update(snapshot([root, worker, quiet]))
    assert len(out.getvalue().splitlines()) == 1  # nothing changed: the family line only
    assert out.flushes == 4


def test_plain_line_when_a_member_execs_another_program() -> None:
    """A second exec keeps the state "execd" and may move no count in the interval its record
    is read (the counts moved with it the interval before): the new name still gets a line."""
    out = io.StringIO()
    reporter = PlainReporter(out, clock=lambda: 0.0)
    init = member(101, 5, comm="sh", execs=1)
    reporter.update(snapshot([member(100, role=Role.ROOT), init]))
    out.seek(0)
    out.truncate()
    init.comm = "python3"
    reporter.update(snapshot([member(100, role=Role.ROOT), init]))
    assert out.getvalue().splitlines()[1:] == [
        "  pid=101 role=worker comm=python3 +copies=0 copies=5 reuses=0 zero_fills=0 state=execd"
    ]


def test_plain_huge_numbers_are_single_tokens() -> None:
    out = io.StringIO()
    PlainReporter(out, clock=lambda: 0.0).update(
        snapshot([member(100, 50_000_000, role=Role.ROOT)])
    )
    first = out.getvalue().splitlines()[0]
    assert "copies=50000000 (195312.5 MiB, 4.1 MiB/s)" in first


# --- summary --------------------------------------------------------------------------------


def test_render_summary() -> None:
    console = record(width=140)
    render_summary(family(), console)
    text = console.export_text()
    lines = text.splitlines()
    assert lines[0] == "cowtrace summary: root 100 (demo-master), root exited after 1m02s"
    assert lines[1] == (
        "totals: 16,578 copies (64.8 MiB), 40 file copies, 12 reuses, 3 zero-fills,"
        " 0 lost detail events"
    )
    assert lines[2] == "7 members (5 alive at end, 2 exited)"
    assert row_pids("\n".join(lines[4:])) == [100, 105, 101, 106, 103, 102, 104]
    assert "killed by signal 9" in text
    assert "file copies" in lines[4] and "avg MiB/s" in lines[4]
    worker2 = next(line for line in lines if line.lstrip().startswith("105"))
    # 9000 copies over 62.5 s: 35.2 MiB, 0.6 MiB/s on average
    assert worker2.split()[4:8] == ["9,000", "40", "35.2", "0.6"]


def test_render_summary_narrow_terminal_drops_columns_never_cuts() -> None:
    console = record(width=90)
    render_summary(family(lost=3), console)
    text = console.export_text()
    assert "…" not in text
    assert "3 lost detail events" in " ".join(text.split())
    assert row_pids(text) == [100, 105, 101, 106, 103, 102, 104]
    header = next(line for line in text.splitlines() if line.startswith("pid"))
    # age, mean rate and file copies went (in that order) until the table fitted
    assert " ".join(header.split()) == "pid role comm copies copied MiB reuses zero-fills status"
    assert rows(text)[102][-4:] == ["killed", "by", "signal", "9"]
    assert rows(text)[106][1:3] == ["descendant", "sh"]


def test_render_summary_drops_all_zero_columns_when_narrow() -> None:
    members = [
        member(100, 7, role=Role.ROOT, comm="demo-master"),
        member(101, 2560, comm="demo-worker-1", reuses=4),
        member(102, 5000, exited=ExitStatus(signal=9), comm="demo-worker-2"),
    ]
    console = record(width=100)
    render_summary(snapshot(members, reason="interrupted"), console)
    text = console.export_text()
    assert "0 file copies, 4 reuses, 0 zero-fills, 0 lost detail events" in text
    header = next(line for line in text.splitlines() if line.startswith("pid"))
    # file copies and zero-fills are all zero: they go, and then the table fits
    assert " ".join(header.split()) == "pid role comm age copies copied MiB avg MiB/s reuses status"
    assert rows(text)[102][-4:] == ["killed", "by", "signal", "9"]
    assert rows(text)[101][2] == "demo-worker-1"


def test_summary_lost_events_and_default_reason() -> None:
    snap = family(lost=5)
    snap.end_reason = ""
    text = "\n".join(summary_lines(snap))
    assert "tracing ended after 1m02s" in text
    assert "5 lost detail events (counts stay exact; per-event detail is incomplete)" in text


def test_summary_lines_plain_table() -> None:
    lines = summary_lines(family())
    assert lines[:4] == [
        "cowtrace summary: root 100 (demo-master), root exited after 1m02s",
        "totals: 16,578 copies (64.8 MiB), 40 file copies, 12 reuses, 3 zero-fills,"
        " 0 lost detail events",
        "7 members (5 alive at end, 2 exited)",
        "",
    ]
    assert lines[4].split() == [
        "pid",
        "role",
        "comm",
        "age",
        "copies",
        "file",
        "copies",
        "copied",
        "MiB",
        "avg",
        "MiB/s",
        "reuses",
        "zero-fills",
        "status",
    ]
    assert row_pids("\n".join(lines[5:])) == [100, 105, 101, 106, 103, 102, 104]
    assert lines[-2].endswith("killed by signal 9")
    assert lines[-1].endswith("exit 0")
    # numbers right-aligned: every copies cell ends where the header does
    end = lines[4].index("copies") + len("copies")
    assert {line[end - 1] for line in lines[5:]} != {" "}
    assert all(line[end - 1].isdigit() for line in lines[5:])


def test_adopted_member_mean_rate_counts_only_traced_time() -> None:
    adopted = member(101, 2560, start=-1000.0)  # running long before tracing began at 0
    snap = snapshot([member(100, role=Role.ROOT), adopted])
    assert fmt.traced_seconds(adopted, snap) == pytest.approx(62.5)
    assert fmt.mean_rate(adopted, snap) == pytest.approx(10 * MIB / 62.5)


def test_empty_snapshot_before_the_root_is_seen() -> None:
    snap = Snapshot(root_pid=100, started=0.0, now=1.0, members=[], totals=Counts())
    text = live_text(snap)
    assert "root 100 ?" in text and "members 0 alive, 0 exited" in text
    out = io.StringIO()
    PlainReporter(out, clock=lambda: 0.0).update(snap)
    assert len(out.getvalue().splitlines()) == 1
    lines = summary_lines(snap)
    assert lines[0] == "cowtrace summary: root 100 (?), tracing ended after 1s"
    assert lines[-1].split()[0] == "pid"
