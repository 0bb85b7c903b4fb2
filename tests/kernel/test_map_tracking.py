"""Issue 12, item 1: no syscall tracepoints, and what they used to give still right.

- While cowtrace traces a family, no `syscalls:*` tracepoint is in use (one would put every
  task on the host on the slow syscall path): neither tracefs' enable switches nor a BPF
  attachment of the cowtrace process.
- Map changes are followed without them: `map_changes` moves, replaces, protects and unmaps
  one address range between forks, and every copy of every child lands in the mapping it was
  made in (the --events `mapping`/`path` fields, exact per child).
- Exit statuses without `sys_enter_exit_group`: codes and fatal signals of members, from the
  SIGCHLD the kernel sends their parent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e import wait_attached
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import COWTRACE, read_jsonl, run_args, run_cowtrace

build = load_build()
SYSCALL_EVENTS = Path("/sys/kernel/tracing/events/syscalls")


def _syscall_switches() -> dict[str, str]:
    return {path.parent.name: path.read_text().strip() for path in SYSCALL_EVENTS.glob("*/enable")}


def _perf_links(pid: int) -> list[dict]:
    """The tracepoint/raw tracepoint/probe attachments held by process `pid`."""
    listed = subprocess.run(
        ["bpftool", "perf", "list", "-j"], capture_output=True, text=True, check=True
    )
    return [link for link in json.loads(listed.stdout or "[]") if link["pid"] == pid]


def test_no_syscall_tracepoint_is_in_use_while_tracing(tmp_path):
    before = _syscall_switches()
    assert before, "no syscalls:* events in tracefs"
    target = subprocess.Popen(["sleep", "120"])
    tracer = subprocess.Popen(
        [*COWTRACE, str(target.pid), "--plain", "--interval", "0.2", "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_attached(tracer)
        links = _perf_links(tracer.pid)
        during = _syscall_switches()
    finally:
        tracer.terminate()
        tracer.communicate(timeout=60)
        target.kill()
        target.wait()
    hooks = {(link["fd_type"], link.get("tracepoint", "")) for link in links}
    # the listing sees cowtrace's own hooks (so an empty answer cannot pass by accident)
    assert ("raw_tracepoint", "mmap_lock_acquire_returned") in hooks, hooks
    assert ("raw_tracepoint", "signal_generate") in hooks, hooks
    assert ("tracepoint", "sched_process_exec") in hooks, hooks
    syscall_hooks = [h for h in hooks if h[1].startswith(("sys_enter", "sys_exit"))]
    assert syscall_hooks == []
    switched_on = sorted(name for name, on in during.items() if on != "0" and before[name] == "0")
    assert switched_on == []


def test_copies_land_in_the_mapping_they_were_made_in(fixture_binaries, tmp_path):
    pages = 256
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    command = [str(fixture_binaries("map_changes")), str(pages), str(tmp_path)]
    result = run_cowtrace(run_args(summary_path, events_path, *command), timeout=120)
    assert result.returncode == 0, result.stderr
    facts = build.parse_lines(result.stdout)
    events = read_jsonl(events_path)
    (path,) = [line["file"] for line in facts.other if "file" in line]
    expected = {
        ("c1", "a"): ("anon", None),
        ("c2", "b"): ("anon", None),
        ("c2", "file"): ("file", f"{path} (deleted)"),
        ("c3", "heap"): ("heap", None),
    }
    for (who, name), (mapping, file) in expected.items():
        pid = facts.pid_of(who)
        buffer = facts.buffers[name]
        copies = [
            e
            for e in events
            if e["pid"] == pid
            and e["kind"] == "copy"
            and buffer.start <= (e["addr"] or 0) < buffer.end
        ]
        assert len(copies) == pages, (who, name)
        seen = {(e["mapping"], e["path"]) for e in copies}
        assert seen == {(mapping, file)}, (who, name, seen)
    summary = json.loads(summary_path.read_text())
    by_pid = {p["pid"]: p for p in summary["processes"]}
    for who in ("c1", "c2", "c3"):
        assert by_pid[facts.pid_of(who)]["copies"] >= pages * (2 if who == "c2" else 1)


EXITS = """
import os, signal, sys, time
def child(action):
    pid = os.fork()
    if pid == 0:
        action()
    return pid
def killed():
    time.sleep(30)
def coded():
    os._exit(7)
def threaded():
    import threading
    threading.Thread(target=lambda: os._exit(9)).start()
    time.sleep(30)
victim = child(killed)
kids = [child(coded), child(threaded), victim]
os.kill(victim, signal.SIGKILL)
for kid in kids:
    os.waitpid(kid, 0)
print(" ".join(str(k) for k in kids))
sys.exit(3)
"""


def test_exit_codes_and_signals_of_members(tmp_path):
    """exit(7), a thread's exit(9), SIGKILL, and the root's sys.exit(3): shown as the kernel
    reported them to the parents."""
    summary_path = tmp_path / "s.json"
    result = run_cowtrace(
        ["run", "--quiet", "--json", str(summary_path), "--", sys.executable, "-c", EXITS]
    )
    assert result.returncode == 3, result.stderr
    coded, threaded, victim = (int(p) for p in result.stdout.split())
    summary = json.loads(summary_path.read_text())
    by_pid = {p["pid"]: p for p in summary["processes"]}
    status = {
        pid: (by_pid[pid]["exit_code"], by_pid[pid]["exit_signal"])
        for pid in (coded, threaded, victim, summary["root_pid"])
    }
    assert status == {
        coded: (7, None),
        threaded: (9, None),
        victim: (None, 9),
        summary["root_pid"]: (3, None),
    }
