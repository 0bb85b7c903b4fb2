"""cowtrace as a user starts it, for the production-cost benchmarks, and a reaper that ends
every process a benchmark started, even on Ctrl-C or SIGTERM.

Shared by bench/nonmember.py, bench/servers.py and bench/idle.py.  Each process is started in
a session of its own, so its whole group (a server's workers, `cowtrace run`'s command) can be
killed at the end; SIGTERM to the benchmark is turned into KeyboardInterrupt so that the same
`finally` runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e import family_of, kill_tree  # noqa: E402

COWTRACE = [sys.executable, "-m", "cowtrace"]
def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


class Lines:
    """Reads a pipe's lines in a thread, so a benchmark can wait for one without blocking."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                if self.eof:
                    raise RuntimeError(f"ended before {pattern!r}: {self.lines[-20:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no line matching {pattern!r}: {self.lines[-20:]}")
                self._cond.wait(left)


class Reaper:
    """Starts processes in their own sessions; kills every group still alive at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._previous = None

    def __enter__(self) -> Reaper:
        def interrupt(_signum, _frame):
            raise KeyboardInterrupt

        self._previous = signal.signal(signal.SIGTERM, interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            self.kill(proc)
        signal.signal(signal.SIGTERM, self._previous)

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """The process, its descendants and its group, at once."""
        kill_tree(proc)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self, proc: subprocess.Popen, signum: int = signal.SIGINT, timeout: float = 60) -> int:
        """Ask it to end (cowtrace writes its summary on SIGINT); kill it if it will not."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        code = proc.poll()
        self.kill(proc)
        return -1 if code is None else code


def start_attach(reaper: Reaper, pid: int, options: list[str] = ()) -> subprocess.Popen:
    """`cowtrace PID --plain --interval 1 [options]`, returned once attached (its first line)."""
    proc = reaper.start(
        [*COWTRACE, str(pid), "--plain", "--interval", "1", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        out.wait_for(r"root=\d+", timeout=180)
    except RuntimeError as error:
        raise RuntimeError(f"cowtrace {pid}: {err.lines[-10:]}") from error
    return proc


def start_agent(reaper: Reaper, target: list[str], interval: float = 5.0) -> tuple:
    """`cowtrace agent TARGET --metrics-addr 127.0.0.1:0`: (process, its stderr, metrics URL),
    returned once ready."""
    proc = reaper.start(
        [*COWTRACE, "agent", *target, "--metrics-addr", "127.0.0.1:0",
         "--interval", str(interval)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    err = Lines(proc.stderr)
    url = err.wait_for(r"serving metrics on (\S+)", timeout=180).group(1)
    err.wait_for(r"ready:", timeout=180)
    return proc, err, url


def start_run(reaper: Reaper, command: list[str], options: list[str] = (),
              **kwargs) -> tuple[subprocess.Popen, int]:
    """`cowtrace run --quiet [options] -- COMMAND`: (cowtrace, the command's pid) once the
    command is released (it runs traced from its first instruction)."""
    proc = reaper.start([*COWTRACE, "run", "--quiet", *options, "--", *command], **kwargs)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"cowtrace run ended ({proc.returncode}) before its command")
        kids = children(proc.pid)
        if kids:
            return proc, kids[0]
        time.sleep(0.05)
    raise TimeoutError("cowtrace run did not start its command")


@contextlib.contextmanager
def idle_process(reaper: Reaper) -> Iterator[subprocess.Popen]:
    """A process that does nothing (for cowtrace to trace elsewhere)."""
    proc = reaper.start(["sleep", "100000"])
    try:
        yield proc
    finally:
        reaper.kill(proc)


def process_cpu_ns(pid: int) -> int:
    """CPU time of one process, every thread, in ns (schedstat: no tick rounding)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def family_cpu_ns(root: int) -> int:
    """CPU time of a process family, every thread, in ns."""
    return sum(process_cpu_ns(pid) for pid in family_of(root))


def pin_family(root: int, cpu: int) -> None:
    """Every thread of a process family onto one CPU (its later forks inherit it)."""
    for pid in family_of(root):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), {cpu})


def attached_hooks() -> tuple[int, int]:
    """(syscall tracepoints, uprobes) with a BPF program attached now, by anyone
    (`bpftool perf`): either taxes every process of the host, this benchmark's too."""
    try:
        shown = json.loads(subprocess.run(
            ["bpftool", "perf", "--json"], capture_output=True, text=True, check=True
        ).stdout or "[]")
    except (OSError, subprocess.CalledProcessError, ValueError):
        return (-1, -1)
    syscalls = sum(str(e.get("tracepoint", "")).startswith("sys_") for e in shown)
    uprobes = sum(e.get("fd_type") in ("uprobe", "uretprobe") for e in shown)
    return syscalls, uprobes


def machine_note() -> str:
    """Load average and other tracers: figures taken on a busy machine say so."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    own = os.getpid()
    others = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != own:
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"cowtrace" in cmdline[1:3] or cmdline[0].endswith(b"/cowtrace"):
                    others.append(entry.name)
    syscalls, uprobes = attached_hooks()
    stats = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    return (f"machine: load average {' '.join(load)}; bpf_stats_enabled={stats};"
            f" {len(others)} other cowtrace processes;"
            f" attached by others: {syscalls} syscall tracepoints, {uprobes} uprobes"
            " (these tax this benchmark's processes too)")
