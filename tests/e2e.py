"""The end-to-end harness for the real-server examples (examples/*, tests/kernel/test_examples_*).

A real server's copies cannot be derived by hand, so each example is checked against the
kernel's own books, read by code that shares nothing with the tracer:

- delay accounting (taskstats ``wpcopy_count``): per process, copies + zero-fills;
- smaps (``Private_Dirty``, ``Pss_Anon``): the private memory the copies leave behind.

The trick that makes per-process comparisons exact on a live server: the whole family is frozen
with SIGSTOP while cowtrace attaches and while the baseline is read, and again at the end while
the final books are read, so no write falls between cowtrace's counting and the kernel's. A
stopped process writes nothing (SIGSTOP runs no handler), and reading taskstats or smaps writes
nothing in the target. Processes that exit during the trace (a BGSAVE child, an old nginx
worker) are read from the kernel's exit records.

Every process a run starts is stopped by the run's ``close`` (used from fixture finalizers),
even when the test fails half-way. ``COWTRACE_EXAMPLES_OUT=DIR`` keeps each run's cowtrace
command, plain output, JSON summary and check table there: the examples' READMEs quote them.

The kernel tests trace their fixtures (tests/fixtures) through the last section, written once:
start cowtrace (or a Session) on a fixture, wait for it, read what it wrote.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cowtrace.host import procfs, smaps, taskstats
from tests.helpers import COWTRACE, EXIT_RECORD_TIMEOUT_S, read_jsonl

PAGE = 4096
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
T = TypeVar("T")


# --- process families ----------------------------------------------------------------------


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        out[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return out


def family_of(root: int) -> list[int]:
    """``root`` and every living process descended from it, root first."""
    parents = _ppid_map()
    members = [root]
    i = 0
    while i < len(members):
        members += sorted(pid for pid, ppid in parents.items() if ppid == members[i])
        i += 1
    return [pid for pid in members if pid in parents]


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def stop_all(pids: list[int], timeout: float = 60.0) -> None:
    """SIGSTOP every process and wait until each is stopped (or gone): a process stops once it
    next runs, which on a busy machine can take a while (the timeout only bounds a failure)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _state(pid) not in (None, "T", "t", "Z", "X"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {pid} did not stop")
            time.sleep(0.002)


def cont_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _run_ns(pid: int) -> int | None:
    """CPU time of every thread of `pid` so far, in ns (schedstat), None once it is gone."""
    try:
        return sum(
            int((task / "schedstat").read_text().split()[0])
            for task in Path(f"/proc/{pid}/task").iterdir()
        )
    except (OSError, ValueError, IndexError):
        return None


def wait_idle(pids: list[int], timeout: float = 120.0, quiet_s: float = 0.2) -> None:
    """Wait until every process of `pids` is idle: asleep, and its threads ran no CPU time for
    `quiet_s`.  A server's workers that have finished booting block in accept() or poll();
    waiting for that instead of a fixed pause holds on a loaded machine too, where booting
    takes longer (and a worker that is runnable but not running is not idle)."""
    deadline = time.monotonic() + timeout
    last = {pid: _run_ns(pid) for pid in pids}
    quiet_since = time.monotonic()
    while True:
        time.sleep(0.05)
        now = {pid: _run_ns(pid) for pid in pids}
        asleep = all(_state(pid) in ("S", "I") for pid in pids)
        if now != last or not asleep:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        last = now
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} did not go idle within {timeout} s")


def wait_until(check: Callable[[], T], timeout: float, what: str) -> T:
    """The first truthy answer of `check`, asked every 0.1 s for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before listening on {port}")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def kill_tree(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Kill a server and every descendant, then reap the direct child.

    The whole family is stopped first, root first: a master that saw a worker die would
    otherwise fork a replacement (nginx does) before its own SIGKILL arrives, and the
    replacement would outlive the test. Repeats until no descendant is left.
    """
    if proc.poll() is None:
        deadline = time.monotonic() + timeout
        pids = family_of(proc.pid)
        while pids and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
            pids = [p for p in family_of(proc.pid) if _state(p) not in (None, "Z", "X")]
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


# --- the kernel's books ----------------------------------------------------------------------


@dataclass
class Books:
    """What the kernel says about each process at one moment (family frozen)."""

    wpcopy: dict[int, int] = field(default_factory=dict)
    private_dirty: dict[int, int] = field(default_factory=dict)
    pss_anon: dict[int, int] = field(default_factory=dict)
    comm: dict[int, str] = field(default_factory=dict)


def read_books(pids: list[int]) -> Books:
    books = Books()
    for pid in pids:
        try:
            rollup = smaps.read_rollup(pid)
            books.wpcopy[pid] = taskstats.query_tgid(pid).wpcopy_count or 0
        except (OSError, taskstats.TaskstatsError):
            continue  # exited meanwhile: its exit record speaks for it
        books.private_dirty[pid] = rollup.get("Private_Dirty", 0)
        books.pss_anon[pid] = rollup.get("Pss_Anon", 0)
        books.comm[pid] = comm_of(pid)
    return books


# --- cowtrace attached to a running root -----------------------------------------------------


def out_dir() -> Path | None:
    out = os.environ.get("COWTRACE_EXAMPLES_OUT")
    if not out:
        return None
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Row:
    """One process in the delay-accounting check."""

    pid: int
    comm: str
    role: str
    copies: int
    zero_fills: int
    kernel: int  # wpcopy_count growth over the trace
    wp_retries: int = 0  # copies the kernel gave up to retry: in its count (README, --json)

    @property
    def ours(self) -> int:
        return self.copies + self.zero_fills + self.wp_retries


class AttachedTrace:
    """cowtrace attached to a running server, between two frozen readings of the kernel's books.

    ``start()`` freezes the family, attaches cowtrace, reads the baseline and thaws it;
    ``finish()`` freezes it again, reads the final books, ends cowtrace with SIGINT (as a user's
    Ctrl-C) and thaws. ``close()`` stops cowtrace and the exit listener whatever happened.
    """

    def __init__(
        self, root: int, workdir: Path, name: str, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.root = root
        self.workdir = workdir
        self.name = name
        self.json_path = workdir / f"{name}.json"
        self.plain_path = workdir / f"{name}.plain.txt"
        self.argv = [
            *COWTRACE,
            str(root),
            "--plain",
            "--interval",
            "1",
            "--json",
            str(self.json_path),
            *extra_args,
            # Extra cowtrace options for a run by hand (e.g. "--no-stacks --events e.jsonl").
            *os.environ.get("COWTRACE_E2E_EXTRA", "").split(),
        ]
        self.listener = taskstats.ExitListener()
        self.tracer: subprocess.Popen | None = None
        self.base = Books()
        self.end = Books()
        self.summary: dict = {}
        self._plain = None

    def start(self, attach_timeout: float = 60.0) -> None:
        self.listener.open()
        members = family_of(self.root)
        stop_all(members)
        try:
            self._attach(attach_timeout)
            self.base = read_books(members)
        finally:
            cont_all(members)

    def _attach(self, attach_timeout: float) -> None:
        """Start cowtrace and wait until it traces the family (its first --plain line).

        No retry: the rare `OSError: [Errno 9] Bad file descriptor` at attach was bcc's symbol
        caches closing a descriptor they did not own (iovisor/bcc#5193); cowtrace no longer
        uses them (cowtrace/host/symbols.py).  COWTRACE_DEBUG=1: a failure shows its whole
        traceback."""
        self._plain = open(self.plain_path, "w")  # noqa: SIM115 - closed in close()
        self.tracer = subprocess.Popen(
            self.argv,
            stdout=self._plain,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COWTRACE_DEBUG": "1"},
        )
        # In --plain mode the first line is printed once the family is traced.
        deadline = time.monotonic() + attach_timeout
        while self.plain_path.stat().st_size == 0:
            if self.tracer.poll() is not None:
                raise RuntimeError(f"cowtrace exited: {self.tracer.stderr.read()}")
            if time.monotonic() > deadline:
                raise TimeoutError("cowtrace did not attach")
            time.sleep(0.05)

    def snapshot(self) -> Books:
        """The books in the middle of a run (family frozen while read): e.g. a BGSAVE child's
        Private_Dirty while it is still alive."""
        members = family_of(self.root)
        stop_all(members)
        try:
            return read_books(members)
        finally:
            cont_all(members)

    def finish(self, timeout: float = 120.0) -> dict:
        assert self.tracer is not None
        members = family_of(self.root)
        stop_all(members)
        try:
            self.end = read_books(members)
            self.tracer.send_signal(signal.SIGINT)
            _, err = self.tracer.communicate(timeout=timeout)
            assert self.tracer.returncode == 0, err
        finally:
            cont_all(members)
        self.summary = json.loads(self.json_path.read_text())
        return self.summary

    def close(self) -> None:
        if self.tracer is not None and self.tracer.poll() is None:
            self.tracer.kill()
            self.tracer.wait()
        if self._plain is not None:
            self._plain.close()
        self.listener.close()

    # -- the checks --

    def processes(self) -> dict[int, dict]:
        return {p["pid"]: p for p in self.summary["processes"]}

    def delayacct_rows(self) -> list[Row]:
        """cowtrace's copies + zero-fills next to the kernel's wpcopy_count growth, per process.

        A process alive at the end is read from the final books; one that exited during the
        trace from its exit records (summed over its threads). A process that was not there at
        the baseline was forked while traced and counts from zero.
        """
        exits = self.listener.records
        rows = []
        for pid, proc in self.processes().items():
            if pid in self.end.wpcopy:
                final = self.end.wpcopy[pid]
            else:
                self.listener.wait_for(pid, timeout=EXIT_RECORD_TIMEOUT_S)
                exits = self.listener.records
                threads = [r for r in exits.values() if (r.tgid or r.pid) == pid]
                assert threads, f"no exit record for {pid} ({proc['comm']})"
                final = sum(r.wpcopy_count or 0 for r in threads)
            kernel = final - self.base.wpcopy.get(pid, 0)
            rows.append(
                Row(
                    pid,
                    proc["comm"],
                    proc["role"],
                    proc["copies"],
                    proc["zero_fills"],
                    kernel,
                    proc["wp_retries"],
                )
            )
        return rows

    def save(self, table: str, extra: dict | None = None) -> None:
        """Keep the run's artefacts for the README when COWTRACE_EXAMPLES_OUT is set."""
        out = out_dir()
        if out is None:
            return
        shown = ["cowtrace", *self.argv[len(COWTRACE) :]]
        (out / f"{self.name}.cmd").write_text(shlex.join(shown) + "\n")
        (out / f"{self.name}.plain.txt").write_text(self.plain_path.read_text())
        (out / f"{self.name}.json").write_text(self.json_path.read_text())
        (out / f"{self.name}.checks.txt").write_text(table)
        if extra is not None:
            (out / f"{self.name}.extra.json").write_text(json.dumps(extra, indent=1) + "\n")


def format_rows(rows: list[Row], books: tuple[Books, Books] | None = None) -> str:
    """A plain table: per process, cowtrace vs delay accounting, and the smaps growth."""
    head = (
        f"{'pid':>7} {'comm':<16} {'role':<10} {'copies':>8} {'zero':>5} {'retry':>5} "
        f"{'wpcopy':>8} diff"
    )
    if books:
        head += f" {'dPrivDirty_MiB':>14} {'copied_MiB':>10}"
    lines = [head]
    for r in sorted(rows, key=lambda r: (r.role != "root", r.pid)):
        line = (
            f"{r.pid:>7} {r.comm:<16} {r.role:<10} {r.copies:>8} {r.zero_fills:>5} "
            f"{r.wp_retries:>5} {r.kernel:>8} {r.ours - r.kernel:+d}"
        )
        if books:
            base, end = books
            if r.pid in end.private_dirty:
                grown = end.private_dirty[r.pid] - base.private_dirty.get(r.pid, 0)
                line += f" {grown / 2**20:>14.1f} {r.copies * PAGE / 2**20:>10.1f}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def relative_gap(ours: int, kernel: int) -> float:
    return abs(ours - kernel) / max(kernel, 1)


# --- attribution ------------------------------------------------------------------------------


def _function_node(path: Path, function: str) -> ast.FunctionDef:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return node
    raise LookupError(f"no function {function} in {path}")


def python_frame(path: Path, function: str, statement: str) -> str:
    """How cowtrace names a Python frame of ``function`` (defined at module level in ``path``)
    executing the line that contains ``statement`` (exactly one line of the function):
    ``qualname (file:line)``, the line read from the source."""
    node = _function_node(path, function)
    source = path.read_text().splitlines()
    lines = [n for n in range(node.lineno, node.end_lineno + 1) if statement in source[n - 1]]
    if len(lines) != 1:
        raise LookupError(f"{statement!r} is on {len(lines)} lines of {function} in {path}")
    return f"{function} ({path}:{lines[0]})"


def in_function(frame: str, path: Path, function: str) -> bool:
    """Whether a frame cowtrace named is ``function`` of ``path``, at any line of its body."""
    node = _function_node(path, function)
    prefix = f"{function} ({path}:"
    if not (frame.startswith(prefix) and frame.endswith(")")):
        return False
    line = frame[len(prefix) : -1]
    return line.isdigit() and node.lineno <= int(line) <= node.end_lineno


def share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


# --- traced fixtures (tests/kernel) -----------------------------------------------------------
# pytest, the fixtures' build module and the Session are imported where used: bench/ imports
# this module too, where neither pytest nor a tracer in-process is wanted.


def marker_line(path: Path, marker: str) -> int:
    """The line of `path` ending in the marker comment `@marker` (exactly one)."""
    found = [
        number
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if line.rstrip().endswith(f"@{marker}")
    ]
    assert len(found) == 1, (marker, found)
    return found[0]


def plain_trace_args(summary: Path, events: Path) -> list[str]:
    """The options a test traces with: the plain view every 0.2 s (its first line says cowtrace
    has attached), the --json summary and the --events log."""
    return ["--plain", "--interval", "0.2", "--json", str(summary), "--events", str(events)]


def wait_attached(tracer: subprocess.Popen, timeout: float = 60.0) -> None:
    """cowtrace has attached once its plain view prints its first line: the view starts after
    the attach.  (Counting loaded programs is unreliable while other sessions load theirs.)"""
    ready, _, _ = select.select([tracer.stdout], [], [], timeout)
    assert ready, "cowtrace did not attach"
    assert tracer.stdout.readline(), "cowtrace ended before attaching"


def until_ready(stdout: Iterator[str]) -> list[str]:
    """A C fixture's lines up to its `"ready"` line (it then waits for SIGUSR1)."""
    lines = []
    for line in stdout:
        lines.append(line)
        if '"ready"' in line:
            break
    return lines


def trace_attached(command: list[str], tmp_path: Path) -> tuple[int, Any, dict, list[dict]]:
    """cowtrace attached to a C fixture (a `"ready"` line, then it waits for SIGUSR1) before
    the fixture is released; both must end cleanly.  Returns the fixture's pid, its facts
    (build.parse_lines), the --json summary and the --events."""
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    fixture = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    tracer = None
    try:
        assert fixture.stdout is not None
        lines = until_ready(fixture.stdout)
        tracer = subprocess.Popen(
            [*COWTRACE, str(fixture.pid), *plain_trace_args(summary_path, events_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_attached(tracer)
        os.kill(fixture.pid, signal.SIGUSR1)
        lines += fixture.stdout.read().splitlines()
        assert fixture.wait(timeout=60) == 0
        _out, err = tracer.communicate(timeout=60)
        assert tracer.returncode == 0, err
    finally:
        for process in (fixture, tracer):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    from tests.fixtures.conftest_helpers import load_build

    facts = load_build().parse_lines(lines)
    return fixture.pid, facts, json.loads(summary_path.read_text()), read_jsonl(events_path)


@contextlib.contextmanager
def python_fixture(python: Path, script: Path, *args: str) -> Iterator[subprocess.Popen]:
    """A Python fixture that prints `ready`, acts on the lines it reads (`go`, ...) and ends on
    `exit`: yielded once ready, told to exit and reaped afterwards."""
    import pytest

    if not python.exists():
        pytest.fail(f"{python} is missing: the machine set-up installs it")
    fixture = subprocess.Popen(
        [str(python), str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fixture.stdout.readline().strip() == "ready"
        yield fixture
    finally:
        fixture.stdin.write("exit\n")
        fixture.stdin.close()
        fixture.wait(timeout=60)


def trace_python_fixture(
    python: Path, script: Path, tmp_path: Path, *args: str, stack_age_s: float | None = None
) -> tuple[dict, dict, list[dict]]:
    """A Session (this process) attached to a Python fixture before its fork: on `go` it forks
    and prints one JSON line of facts.  Returns (facts, --json summary, --events).

    With `stack_age_s`, the session names known Python stacks again that often, and a fixture
    that first prints {"written": ...} is held there (the session stepping) for two such
    periods and a half, then told `next`."""
    from cowtrace.output.summary import summary_dict
    from cowtrace.session import Session, SessionOptions

    events_path = tmp_path / "events.jsonl"
    options = SessionOptions(events_path=str(events_path))
    if stack_age_s is not None:
        options.python_stack_age_s = stack_age_s
    with python_fixture(python, script, *args) as fixture:
        session = Session(fixture.pid, options)
        try:
            session.open()
            session.attach_root(procfs.read_stat(fixture.pid), adopted=True)
            assert fixture.pid in session.python.images, "the fixture was not detected as CPython"
            fixture.stdin.write("go\n")
            fixture.stdin.flush()
            facts = json.loads(fixture.stdout.readline())
            if "written" in facts and stack_age_s is not None:
                until = time.monotonic() + 2.5 * stack_age_s
                while time.monotonic() < until:
                    session.step(0.05)
                fixture.stdin.write("next\n")
                fixture.stdin.flush()
                facts = json.loads(fixture.stdout.readline())
            session.step(0.05)
            final = session.finish("done")
        finally:
            session.close()
    return facts, summary_dict(final), read_jsonl(events_path)


def outcomes(events: list[dict], pid: int, lo: int, hi: int) -> Counter:
    """(kind, source) of each --events record of `pid` at an address in [lo, hi)."""
    return Counter(
        (e["kind"], e["source"])
        for e in events
        if e["pid"] == pid and e["addr"] is not None and lo <= e["addr"] < hi
    )
