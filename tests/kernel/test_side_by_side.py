"""Two cowtrace at once on one family (issue 15, item 7): a `trace` (A) and the `agent` (B),
both with --delayacct, beside each other.

Both must report exactly what the kernel counts: every process of the family, copies +
zero-fills, against its delay accounting (taskstats wpcopy_count: the children whole, since
they are forked while both trace; the root since a baseline read while it sits idle, after both
attached), in A's --json and metrics and in B's metrics; and each one's own delay-accounting
export must be the kernel's figure too.  A's --events give the fixture's derived answers per
buffer (tests/fixtures/py_prefork.py).

Delay accounting is a system-wide switch both use: A switches it on, B joins, A's exit must
leave it on (B still uses it), B's exit puts it back as it was before A.  When no other
cowtrace on the machine uses it, the test first switches it off, so "put back" is a real
transition; it leaves the machine as it found it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cowtrace.host import taskstats
from cowtrace.switch_users import USERS_ROOT, read_users
from tests.e2e import kill_tree, outcomes, plain_trace_args, wait_until
from tests.helpers import COWTRACE, EXIT_RECORD_TIMEOUT_S, read_jsonl
from tests.kernel.streams import Lines, Prefork
from tests.promserver import http_get, metrics_url

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "py_prefork.py"
PYTHON = "/usr/bin/python3.11"
PAGES, FILE_PAGES = 256, 64
USERS = USERS_ROOT / "delayacct"
SYSCTL = Path("/proc/sys/kernel/task_delayacct")


def live_users() -> list[int]:
    """Processes registered as users of the delay-accounting switch that hold their lock."""
    return [int(path.name) for path, alive in read_users(USERS) if alive]


@pytest.fixture
def delayacct_alone() -> Iterator[bool]:
    """Delay accounting switched off when no other cowtrace uses it (yields True then), the
    sysctl and the switch's record of the state before put back as found afterwards."""
    value = SYSCTL.read_text()
    before = USERS / "before"
    recorded = before.read_text() if before.exists() else None
    alone = not live_users()
    if alone:
        before.unlink(missing_ok=True)  # a dead user's record: not ours to restore through
        SYSCTL.write_text("0\n")
    yield alone
    if alone and not live_users():
        SYSCTL.write_text(value)
        if recorded is not None:
            before.write_text(recorded)


def scrape(url: str) -> dict[tuple[str, int], float]:
    """(metric, pid) -> value for the per-process series."""
    samples = {}
    for family in text_string_to_metric_families(http_get(url)):
        for sample in family.samples:
            if "pid" in sample.labels:
                samples[(sample.name, int(sample.labels["pid"]))] = sample.value
    return samples


def figures(url: str, pids: list[int]) -> dict[int, tuple[float, float]] | None:
    """Per pid: (copies + zero-fills, delay accounting's count) as exported; None until every
    pid has both."""
    samples = scrape(url)
    out = {}
    for pid in pids:
        keys = [("cowtrace_copies_total", pid), ("cowtrace_zero_fills_total", pid)]
        kernel = samples.get(("cowtrace_delayacct_copies_total", pid))
        if kernel is None:
            kernel = samples.get(("cowtrace_delayacct_copies", pid))
        if any(key not in samples for key in keys) or kernel is None:
            return None
        out[pid] = (samples[keys[0]] + samples[keys[1]], kernel)
    return out


def start(args: list[str]) -> tuple[subprocess.Popen, Lines, str]:
    process = subprocess.Popen(
        [*COWTRACE, *args, "--metrics-addr", "127.0.0.1:0", "--delayacct"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = Lines(process.stderr)
    return process, stderr, metrics_url(stderr)


def test_a_trace_and_the_agent_side_by_side(tmp_path, delayacct_alone):
    if not Path(PYTHON).exists():
        pytest.fail(f"{PYTHON} is missing")
    fixture = subprocess.Popen(
        [PYTHON, str(FIXTURE), str(PAGES), str(FILE_PAGES), str(tmp_path / "state.bin")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    # The kernel gives a task its delay-accounting record at fork only while accounting is on:
    # a root started before A switched it on is counted by nobody in the kernel.
    root_accounted = SYSCTL.read_text().strip() == "1"
    summary_path, events_path = tmp_path / "a.json", tmp_path / "a.jsonl"
    started: list[subprocess.Popen] = [fixture]
    try:
        dialogue = Prefork(fixture)
        dialogue.ready()
        root = fixture.pid
        a, a_err, a_url = start([str(root), *plain_trace_args(summary_path, events_path)])
        started.append(a)
        a_view = Lines(a.stdout)
        a_view.wait_for(rf" root={root} ", 60)  # A's view starts once attached
        assert SYSCTL.read_text().strip() == "1"
        b, b_err, b_url = start(
            [
                "agent",
                "--pid",
                str(root),
                "--interval",
                "0.2",
                "--scan-interval",
                "0.1",
                "--pid-label-grace",
                "300",
            ]
        )
        started.append(b)
        b_err.wait_for("ready:", timeout=60)
        wait_until(lambda: ("cowtrace_copies_total", root) in scrape(b_url), 60, "B traces")
        # The root sits in readline: nothing it does from here is before both tracers.
        baseline = taskstats.query_tgid(root).wpcopy_count
        with taskstats.ExitListener() as listener:
            children = dialogue.fork()
            pids = list(children.values())
            facts = dialogue.write()
            kernel = {}
            for name, pid in children.items():
                record = listener.wait_for(pid, timeout=EXIT_RECORD_TIMEOUT_S)
                assert record is not None, f"no exit record for {name}"
                kernel[pid] = record.wpcopy_count
            expected = {pid: (float(n), float(n)) for pid, n in kernel.items()}
            # Both exports, each child: its copies + zero-fills and the kernel's own count.
            for url, who in ((a_url, "A"), (b_url, "B")):
                wait_until(
                    lambda url=url: figures(url, pids) == expected,
                    60,
                    f"{who} exports {expected}: {figures(url, pids)}",
                )
            a_view.wait_for_all([rf"pid={pid} .* state=exit:0" for pid in pids], 30)
            dialogue.exit()
            assert fixture.wait(timeout=30) == 0
            root_record = listener.wait_for(root, timeout=EXIT_RECORD_TIMEOUT_S)
            assert root_record is not None
            if not root_accounted:
                assert root_record.wpcopy_count == baseline == 0
            root_copies = root_record.wpcopy_count - baseline
            # A ends with its root: its summary; B goes on.
            assert a.wait(timeout=60) == 0, a_err.lines
            a_rest = a_view.text()
            summary = json.loads(summary_path.read_text())
            assert summary["end_reason"] == "root exited"
            processes = {p["pid"]: p for p in summary["processes"]}
            counted = {pid: p["copies"] + p["zero_fills"] for pid, p in processes.items()}
            for pid, count in kernel.items():
                assert counted[pid] == count, pid
            if root_accounted:
                assert counted[root] == root_copies
            # B counts the root as A does (both since attach; it sat idle in between).
            wait_until(
                lambda: (figures(b_url, [root]) or {}).get(root, (None,))[0] == counted[root],
                60,
                f"B counts the root's {counted[root]}: {figures(b_url, [root])}",
            )
        # A gone, B still uses delay accounting: it stays on.
        assert SYSCTL.read_text().strip() == "1"
        assert b.poll() is None
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=30) == 0, b_err.lines
        if delayacct_alone and not live_users():  # the last user put it back as it was
            assert SYSCTL.read_text().strip() == "0"
        else:  # another cowtrace on this machine still uses it
            print(f"delay accounting users besides the test: {live_users()}", file=sys.stderr)
            assert SYSCTL.read_text().strip() == "1"
        assert not {a.pid, b.pid} & set(live_users())
    finally:
        for process in reversed(started):
            kill_tree(process)
    # The fixture's derived answers, per buffer, in A's events.
    events = read_jsonl(events_path)
    anon, data = facts["anon"], facts["file"]
    assert outcomes(events, children["c1"], *anon) == {("copy", "anon"): PAGES // 4}
    assert outcomes(events, children["c2"], *anon) == {("copy", "anon"): PAGES // 2}
    assert outcomes(events, children["c1"], *data) == {("copy", "file"): FILE_PAGES}
    assert outcomes(events, root, *anon) == outcomes(events, root, *data) == Counter()
    assert "Traceback" not in "".join(a_err.lines + b_err.lines) + a_rest
