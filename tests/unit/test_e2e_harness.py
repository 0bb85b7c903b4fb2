"""The pure parts of the example tests' harness (tests/e2e.py): family walk, freeze, tables."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.e2e import (
    Books,
    Row,
    _state,
    cont_all,
    family_of,
    format_rows,
    relative_gap,
    stop_all,
    wait_idle,
)


def test_family_walks_children_and_grandchildren():
    shell = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 60
        members = family_of(shell.pid)
        while len(members) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
            members = family_of(shell.pid)
        assert members[0] == shell.pid
        assert len(members) == 3
        assert shell.pid in family_of(os.getpid())
    finally:
        for pid in reversed(family_of(shell.pid)):
            os.kill(pid, 9)
        shell.wait()


def test_stop_and_continue():
    child = subprocess.Popen(["sleep", "30"])
    try:
        stop_all([child.pid])
        assert _state(child.pid) in ("T", "t")
        cont_all([child.pid])
        assert _state(child.pid) in ("S", "R")
    finally:
        child.kill()
        child.wait()


def test_relative_gap_and_table():
    assert relative_gap(101, 100) == 0.01
    assert relative_gap(0, 0) == 0
    rows = [Row(7, "w", "child", 10, 1, 12, wp_retries=1), Row(5, "m", "root", 2, 0, 2)]
    base = Books(private_dirty={5: 0, 7: 4096})
    end = Books(private_dirty={5: 0, 7: 4096 * 11})
    lines = format_rows(rows, (base, end)).splitlines()
    assert lines[1].split()[:8] == ["5", "m", "root", "2", "0", "0", "2", "+0"]
    assert lines[2].split()[:8] == ["7", "w", "child", "10", "1", "1", "12", "+0"]


def test_wait_idle_is_readiness_not_a_pause():
    """A sleeping process is idle at once; one spinning on the CPU never is."""
    sleeper = subprocess.Popen(["sleep", "30"])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        wait_idle([sleeper.pid], timeout=60)
        with pytest.raises(TimeoutError):
            wait_idle([sleeper.pid, spinner.pid], timeout=1)
    finally:
        for proc in (sleeper, spinner):
            proc.kill()
            proc.wait()

