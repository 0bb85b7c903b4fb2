"""`cowtrace agent`: three fixture families start and end one after another while it runs;
each is picked up, counted exactly, and its pids leave the exposition after the grace period.

Exactness without --events: each fixture (attach) sits idle in sigtimedwait between the
agent's pick-up and SIGUSR1, so the kernel's own wpcopy_count (delay accounting) from a
query taken then to the exit record is exactly what the agent must count since it attached.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cowtrace.host import taskstats
from cowtrace.host.cgroup import POD_LABELS, pod_identity
from tests.e2e import until_ready, wait_until
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import COWTRACE, EXIT_RECORD_TIMEOUT_S
from tests.kernel.streams import Lines
from tests.promserver import http_get, metrics_url, promtool_check

build = load_build()
# How long an exited pid stays in the exposition: the exact final counts are checked within it,
# so it leaves room for an agent that a busy machine keeps waiting.
GRACE_S = 15.0
PAGES = 256


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(http_get(url)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def member_values(samples, name: str, pid: int) -> float | None:
    for (metric, labels), value in samples.items():
        if metric == name and dict(labels).get("pid") == str(pid):
            return value
    return None


def pids_shown(samples) -> set[str]:
    return {dict(labels)["pid"] for (_, labels) in samples if "pid" in dict(labels)}


@pytest.fixture
def delayacct():
    previous = taskstats.enable_delayacct()
    yield
    taskstats.restore_delayacct(previous)


def run_one_family(binary, url: str, listener: taskstats.ExitListener) -> list[int]:
    """Start one attach fixture, let the agent pick it up, release it, check its counts."""
    fixture = subprocess.Popen([str(binary), str(PAGES)], stdout=subprocess.PIPE, text=True)
    try:
        lines = until_ready(fixture.stdout)
        facts = build.parse_lines(lines)
        master = fixture.pid
        # Its pod labels: empty on a host, a container id if the tests run in one (host.cgroup).
        pod = dict(zip(POD_LABELS, pod_identity(master).labels(), strict=True))
        family = tuple(sorted({"comm": "at:master", "root": str(master), **pod}.items()))
        wait_until(
            lambda: scrape(url).get(("cowtrace_family_processes", family)) == 3,
            60,
            f"the agent picks up family {master}",
        )
        pids = list(facts.processes)
        base = {pid: taskstats.query_tgid(pid).wpcopy_count for pid in pids}
        os.kill(master, signal.SIGUSR1)
        lines += fixture.stdout.read().splitlines()
        assert fixture.wait(timeout=30) == 0
    finally:
        if fixture.poll() is None:
            fixture.kill()
            fixture.wait()
    facts = build.parse_lines(lines)
    expected = {}
    for pid in pids:
        final = listener.wait_for(pid, timeout=EXIT_RECORD_TIMEOUT_S)
        assert final is not None, f"no exit record for {pid}"
        expected[pid] = final.wpcopy_count - base[pid]

    def counted() -> dict[int, float] | None:
        samples = scrape(url)
        got = {}
        for pid in pids:
            copies = member_values(samples, "cowtrace_copies_total", pid)
            zero_fills = member_values(samples, "cowtrace_zero_fills_total", pid)
            if copies is None or zero_fills is None:
                return None
            got[pid] = copies + zero_fills
        return got if got == expected else None

    wait_until(counted, GRACE_S, f"exact counts {expected} while the pids are still shown")
    samples = scrape(url)
    for expect in facts.expects:  # the buffer's known answer is part of each count
        assert member_values(samples, "cowtrace_copies_total", expect.pid) >= expect.copies
        assert member_values(samples, "cowtrace_reuses_total", expect.pid) >= expect.reuses
        # Attribution runs in the agent too: the copies by mapping kind include the buffer's.
        by_kind = sum(
            value
            for (metric, labels), value in samples.items()
            if metric == "cowtrace_mapping_copies_total"
            and dict(labels).get("pid") == str(expect.pid)
        )
        assert by_kind >= expect.copies, f"pid {expect.pid}: {by_kind} by mapping kind"
    return pids


def test_agent_follows_families_that_come_and_go(fixture_binaries, delayacct):
    binary = fixture_binaries("attach")
    agent = subprocess.Popen(
        [
            *COWTRACE,
            "agent",
            "--comm",
            "^at:master$",
            "--metrics-addr",
            "127.0.0.1:0",
            "--interval",
            "0.2",
            "--scan-interval",
            "0.1",
            "--pid-label-grace",
            str(GRACE_S),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stderr = Lines(agent.stderr)
        url = metrics_url(stderr)
        stderr.wait_for("ready:", timeout=60)
        all_pids: list[int] = []
        with taskstats.ExitListener() as listener:
            for _ in range(3):
                all_pids += run_one_family(binary, url, listener)
        assert agent.poll() is None, "the agent exited with its targets"
        checked = promtool_check(http_get(url))
        assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout

        # After the grace period, every exited pid has left the exposition.
        def retired() -> bool:
            samples = scrape(url)
            roots = {dict(labels).get("root") for (_, labels) in samples}
            mine = {str(p) for p in all_pids}
            return not pids_shown(samples) & mine and not roots & mine

        wait_until(retired, GRACE_S + 60, "exited pids leave the exposition")
        assert agent.poll() is None
        # Other test sessions on this machine may run the same fixture: look for ours.
        roots = {p for p in all_pids if any(f"(pid {p})" in line for line in stderr.lines)}
        assert len(roots) == 3, stderr.lines
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        assert any("stopping: terminated" in line for line in stderr.lines)
        assert not any("Traceback" in line for line in stderr.lines), stderr.lines
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
