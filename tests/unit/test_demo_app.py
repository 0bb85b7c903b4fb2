"""The demo forks its workers, replaces a retired one, and leaves no process behind.

Run as a real subprocess: the demo forks, and forking the test runner itself would be unsafe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def start_demo(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "cowtrace.demo_app", "--mib", "4", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a process group of its own, as a shell job would have
    )


def children(ppid: int) -> dict[int, str]:
    """pid -> comm of the live children of ``ppid``, found by scanning /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, parent = fields[0], int(fields[1])
        if parent == ppid and state != "Z":
            found[int(entry)] = comm
    return found


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def gone(pid: int) -> bool:
    """Not even a zombie: only reaping removes /proc/PID."""
    return not os.path.exists(f"/proc/{pid}")


Demos = list[subprocess.Popen[str]]


@pytest.fixture
def demo_cleanup() -> Iterator[Demos]:
    """Kill the whole process group of any demo a failed test left running."""
    procs: Demos = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_forks_workers_replaces_one_and_sigterm_reaps_all(demo_cleanup: Demos) -> None:
    proc = start_demo("--workers", "3", "--duration", "60", "--replace-after", "1")
    demo_cleanup.append(proc)

    # A worker takes its name just after the fork: until then it reads as demo-master.
    names = ["demo-worker-1", "demo-worker-2", "demo-worker-3"]
    assert wait_for(lambda: sorted(children(proc.pid).values()) == names, 60), children(proc.pid)
    first = children(proc.pid)
    assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "demo-master"

    # Worker 1 retires after 1 s; the master reaps it and forks demo-worker-4.
    assert wait_for(lambda: "demo-worker-4" in children(proc.pid).values(), 60)
    retired = next(pid for pid, comm in first.items() if comm == "demo-worker-1")
    assert gone(retired)
    seen = set(first) | set(children(proc.pid))
    time.sleep(0.5)

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out == ""
    assert err.startswith(f"demo_app: master {proc.pid} ")
    assert err.count("\n") == 1
    assert all(gone(pid) for pid in seen), [p for p in seen if not gone(p)]


def test_ctrl_c_to_the_process_group_stops_cleanly(demo_cleanup: Demos) -> None:
    proc = start_demo("--workers", "2", "--duration", "60")
    demo_cleanup.append(proc)
    assert wait_for(lambda: len(children(proc.pid)) == 2, 60)
    seen = set(children(proc.pid))

    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert all(gone(pid) for pid in seen)


def test_exits_by_itself_after_duration(demo_cleanup: Demos) -> None:
    proc = start_demo("--workers", "2", "--duration", "1")
    demo_cleanup.append(proc)
    assert wait_for(lambda: len(children(proc.pid)) == 2, 60)
    seen = set(children(proc.pid))
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert all(gone(pid) for pid in seen)
