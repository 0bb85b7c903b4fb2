"""Helpers for the tests: running the cowtrace CLI, and checking what it left loaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

COWTRACE = [sys.executable, "-m", "cowtrace"]
# How long a test waits for a process' exit record (taskstats.ExitListener.wait_for): it is
# there within milliseconds of the exit, and this bound only fails a test whose record never
# comes, on a machine whose cores are all busy too (the listener's thread waits its turn).
EXIT_RECORD_TIMEOUT_S = 60.0
# Names bcc gives the programs of bpf/cowtrace.bpf.c and bpf/calibrate.bpf.c (bpftool shows
# them truncated to 15 characters for some program types).
PROGRAM_NAMES = (
    "mm_page_alloc",
    "rss_stat",
    "raw_tracepoint__page_fault_kernel",
    "raw_tracepoint__page_fault_user",
    "raw_tracepoint__mmap_lock_acquire_returned",
    "raw_tracepoint__signal_generate",
    "raw_tracepoint__task_rename",
    "tracepoint__sched__sched_process_exec",
    "tracepoint__sched__sched_process_exit",
    "tracepoint__sched__sched_process_free",
    "tracepoint__signal__signal_generate",
    "tracepoint__signal__signal_deliver",
    "tracepoint__task__task_newtask",
    "cowalloc_",  # allocator uprobes: cowalloc_return, cowalloc_<allocator>_<function>
)


def kernel_unavailable_reason() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (run with /usr/bin/python3's venv)"
    if not Path("/sys/kernel/tracing/events").exists():
        return "tracefs is not mounted"
    if shutil.which("bpftool") is None:
        return "bpftool is not installed"
    return None


# Every process a test session starts inherits this tag, so that the leak check counts only the
# programs held by this session's processes: other sessions may trace on the same machine.
SESSION_TAG_VAR = "COWTRACE_TEST_SESSION"
os.environ.setdefault(SESSION_TAG_VAR, str(os.getpid()))


def _session_pids() -> list[int]:
    """Live processes started by this test session (they carry its tag), this one excluded."""
    tag = f"{SESSION_TAG_VAR}={os.environ[SESSION_TAG_VAR]}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if tag in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _bpf_ids_held_by(pid: int, kind: str) -> set[int]:
    """Ids of the BPF objects of `kind` ("prog" or "map") whose fds `pid` holds (from
    /proc/PID/fdinfo: this bpftool cannot list an object's holders)."""
    ids = set()
    try:
        fdinfos = list(Path(f"/proc/{pid}/fdinfo").iterdir())
    except OSError:
        return ids
    for fdinfo in fdinfos:
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(f"{kind}_id:"):
                ids.add(int(line.split()[1]))
    return ids


def _prog_ids_held_by(pid: int) -> set[int]:
    return _bpf_ids_held_by(pid, "prog")


def bpf_map_has_key(holder: int, name: str, key: int) -> bool:
    """Whether the map `name` that process `holder` (a cowtrace) holds has the u32 `key`:
    how a test sees that cowtrace has told its kernel program something (e.g. a pid's
    CPython layout in `py_procs`), instead of waiting a while and hoping it has."""
    held = _bpf_ids_held_by(holder, "map")
    if not held:
        return False
    shown = subprocess.run(
        ["bpftool", "map", "show", "--json"], capture_output=True, text=True, check=True
    ).stdout
    ids = [m["id"] for m in json.loads(shown or "[]") if m["id"] in held and m.get("name") == name]
    key_bytes = [f"0x{byte:02x}" for byte in key.to_bytes(4, "little")]
    return any(
        subprocess.run(
            ["bpftool", "map", "lookup", "id", str(map_id), "key", *key_bytes],
            capture_output=True,
        ).returncode
        == 0
        for map_id in ids
    )


def cowtrace_programs_loaded(pids: list[int] | None = None) -> list[str]:
    """cowtrace's BPF programs held by `pids` (default: every process of this test session)."""
    held: set[int] = set()
    for pid in _session_pids() if pids is None else pids:
        held |= _prog_ids_held_by(pid)
    if not held:
        return []
    out = subprocess.run(
        ["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True
    ).stdout
    leaked = []
    for prog in json.loads(out or "[]"):
        name = prog.get("name", "")
        ours = any(p.startswith(name) or name.startswith(p) for p in PROGRAM_NAMES)
        if prog.get("id") in held and len(name) >= 8 and ours:
            leaked.append(name)
    return leaked


def poll_until_empty(read: Callable[[], list[str]], timeout: float, step: float) -> list[str]:
    """What `read` still finds once it finds nothing or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    found = read()
    while found and time.monotonic() < deadline:
        time.sleep(step)
        found = read()
    return found


def wait_until_unloaded(timeout: float = 60.0) -> list[str]:
    """Programs are freed asynchronously after their last fd closes (a kernel worker, which
    waits its turn on a busy machine): wait for that.  It returns as soon as none is left; the
    timeout only bounds a real leak's failure."""
    return poll_until_empty(cowtrace_programs_loaded, timeout, 0.1)


def in_read(pid: int) -> bool:
    """Whether `pid` sits in read(2) (x86-64 system call 0, from /proc/PID/syscall): e.g. `run`'s
    launcher at its hold point, waiting for its release byte.  How a test knows a process got
    there, rather than supposing it did after a pause."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[:1] == ["0"]
    except OSError:
        return False


def run_cowtrace(
    args: list[str], *, timeout: float = 120, check: bool = False, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a child process."""
    return subprocess.run(
        [*COWTRACE, *args], capture_output=True, text=True, timeout=timeout, check=check, **kwargs
    )


def wpcopy_passes(process: dict) -> int:
    """What delay accounting's wpcopy_count counts for a process of the --json summary: its
    copies and zero-fills, and the copies the kernel gave up to retry (`wp_retries`, README)."""
    return process["copies"] + process["zero_fills"] + process["wp_retries"]


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


# `run` counts its root from the exec on (the held child first ran cowtrace's own code), while
# delay accounting counts from the fork: under this shell every process of the command is
# counted from its first instruction by both.
UNDER_A_SHELL = ("/bin/sh", "-c", '"$@"; exit $?', "sh")


def run_args(summary: Path, events: Path, *command: str) -> list[str]:
    """`run --quiet --json SUMMARY --events EVENTS -- COMMAND...`: how tests trace a command."""
    return ["run", "--quiet", "--json", str(summary), "--events", str(events), "--", *command]


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    """A bad-input error: non-zero exit, one `cowtrace: error: ...` line matching `pattern`,
    no traceback."""
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cowtrace: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
