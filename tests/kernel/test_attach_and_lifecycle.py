"""Attach mode, bad input, ending by signal, and lost detail events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter

import pytest

from cowtrace.host import taskstats
from tests.e2e import trace_attached, wait_attached
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import (
    COWTRACE,
    EXIT_RECORD_TIMEOUT_S,
    read_jsonl,
    run_cowtrace,
    wait_until_unloaded,
    wpcopy_passes,
)

build = load_build()


def test_attach_counts_workers_that_already_exist(fixture_binaries, tmp_path):
    master, facts, summary, events = trace_attached(
        [str(fixture_binaries("attach")), "256"], tmp_path
    )
    processes = {p["pid"]: p for p in summary["processes"]}
    assert summary["end_reason"] == "root exited"
    buffer = facts.buffers["buf"]
    for expect in facts.expects:
        got = Counter(
            e["kind"]
            for e in events
            if e["pid"] == expect.pid and e["addr"] and buffer.start <= e["addr"] < buffer.end
        )
        assert (got["copy"], got["reuse"], got["zero_fill"]) == (
            expect.copies,
            expect.reuses,
            expect.zero_fills,
        ), f"pid {expect.pid}"
    workers = [facts.pid_of("w1"), facts.pid_of("w2")]
    for pid in workers:
        assert processes[pid]["adopted"] is True
        assert processes[pid]["role"] == "child"
    assert processes[master]["role"] == "root"


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["999999999"], "no process with pid 999999999", 1),
        (["2"], "is a kernel thread", 1),
        (["run", "--", "/nonexistent/command"], "command not found", 127),
        (["trace", "notapid"], "", 2),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args, message, code):
    result = run_cowtrace(args, timeout=60)
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    if message:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_not_root_is_one_line():
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *COWTRACE, "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "root" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_ending_by_signal_leaves_nothing_loaded(signum, tmp_path):
    target = subprocess.Popen(["sleep", "120"])
    summary_path = tmp_path / "s.json"
    tracer = subprocess.Popen(
        [*COWTRACE, str(target.pid), "--plain", "--json", str(summary_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_attached(tracer)
        tracer.send_signal(signum)
        out, err = tracer.communicate(timeout=30)
    finally:
        target.kill()
        target.wait()
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    assert wait_until_unloaded() == []
    if signum == signal.SIGKILL:
        return
    assert tracer.returncode == 0, err
    assert "Traceback" not in err
    summary = json.loads(summary_path.read_text())
    assert summary["end_reason"] == ("interrupted" if signum == signal.SIGINT else "terminated")
    assert "0 lost" in out


def test_lost_events_are_counted_and_counts_stay_exact(fixture_binaries, tmp_path):
    """A 1 MiB ring holds ~26k records; 60k copies arrive while the consumer holds back."""
    pages = 60000
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    previous = taskstats.enable_delayacct()
    with taskstats.ExitListener() as listener:
        result = run_cowtrace(
            [
                "run",
                "--quiet",
                "--ring-mb",
                "1",
                "--hold-events",
                "30",
                "--json",
                str(summary_path),
                "--events",
                str(events_path),
                "--",
                str(fixture_binaries("child_writes")),
                str(pages),
            ],
        )
        assert result.returncode == 0, result.stderr
        facts = build.parse_lines(result.stdout)
        child = facts.pid_of("child")
        exit_record = listener.wait_for(child, timeout=EXIT_RECORD_TIMEOUT_S)
    taskstats.restore_delayacct(previous)
    summary = json.loads(summary_path.read_text())
    events = read_jsonl(events_path)
    totals = summary["totals"]
    assert totals["lost_events"] > 0
    recorded = totals["copies"] + totals["reuses"] + totals["zero_fills"]
    assert len(events) + totals["lost_events"] == recorded
    processes = {p["pid"]: p for p in summary["processes"]}
    # Exact whatever was lost: the kernel's own count of the child's copies agrees.
    assert exit_record is not None
    assert wpcopy_passes(processes[child]) == exit_record.wpcopy_count
    assert processes[child]["copies"] >= pages


def test_exit_signal_is_the_fatal_one_in_a_threaded_process(tmp_path):
    """A fatal signal makes the kernel SIGKILL the process' other threads: the status must
    still name the signal that killed it, and `run` exits as the command did (128 + 15)."""
    program = (
        "import os, signal, threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    summary_path = tmp_path / "s.json"
    result = run_cowtrace(
        ["run", "--quiet", "--json", str(summary_path), "--", "/usr/bin/python3", "-c", program],
        timeout=60,
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    root = json.loads(summary_path.read_text())["processes"][0]
    assert root["exit_signal"] == signal.SIGTERM
    assert root["exit_code"] is None
