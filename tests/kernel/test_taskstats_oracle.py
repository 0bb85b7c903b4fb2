"""The kernel's delay accounting as an oracle, and the C fixtures' answers checked against it.

Needs root (taskstats exit listeners and other processes' smaps), a kernel with
CONFIG_TASK_DELAY_ACCT, and gcc for the fixtures. Delay accounting is switched on for the
module and put back as it was afterwards.

Why these tests matter: every exact number the tracer's tests assert comes from a fixture's
derivation. Here each derivation meets the kernel's own counter: between a process' mark
(just before its first measured write) and its hold point (just before it exits) the kernel's
wpcopy_count must grow by exactly the copies + zero-fills the fixture promised. Reuses are
not counted by the kernel, so a reuse that was really a copy would show up as one too many.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from cowtrace import launcher
from cowtrace.host import smaps, taskstats
from tests.e2e import wait_until
from tests.fixtures.conftest_helpers import load_oracle
from tests.helpers import in_read

PAGE = 4096
_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _load_oracle() -> ModuleType:
    return load_oracle()


def _taskstats_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not taskstats.DELAYACCT_SYSCTL.exists():
        return "kernel without delay accounting (no /proc/sys/kernel/task_delayacct)"
    try:
        taskstats.resolve_family()
    except (OSError, taskstats.TaskstatsError) as exc:
        return f"no taskstats netlink family: {exc}"
    return None


_REASON = _taskstats_usable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture(scope="module", autouse=True)
def delayacct_on() -> Iterator[None]:
    previous = taskstats.enable_delayacct()
    yield
    taskstats.restore_delayacct(previous)


def _cow_buffer(pages: int) -> mmap.mmap:
    """A private anonymous buffer, dirtied (MAP_SHARED, mmap's default, would never copy)."""
    buf = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(pages):
        buf[i * PAGE] = 1
    return buf


def test_query_self() -> None:
    rec = taskstats.query_pid(os.getpid())
    assert rec.pid == os.getpid()
    assert rec.tgid == os.getpid()
    assert rec.version >= 13
    assert rec.wpcopy_count is not None
    assert rec.comm  # e.g. "python3" or "pytest"
    group = taskstats.query_tgid(os.getpid())
    assert group.aggregate
    assert group.wpcopy_count is not None and group.wpcopy_count >= rec.wpcopy_count


def test_query_missing_pid() -> None:
    with pytest.raises(taskstats.TaskstatsError):
        taskstats.query_pid(2**22 + 12345)  # above pid_max's hard limit: never a task


def test_listener_refuses_a_struct_version_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the kernel spoke a newer version: the listener refuses at once, in one line."""
    version = taskstats.query_pid(os.getpid()).version
    monkeypatch.setattr("cowtrace.host.taskstats.record.MAX_VERSION", version - 1)
    taskstats.layout.cache_clear()
    try:
        with pytest.raises(taskstats.TaskstatsVersionError, match=f"version {version}"):
            taskstats.ExitListener().open()
    finally:
        monkeypatch.undo()
        taskstats.layout.cache_clear()


def test_held_launcher_has_made_no_copy() -> None:
    """`run`'s launcher, held before the command: its pid owes the kernel nothing yet."""
    if not launcher.supported():
        pytest.skip("the launcher is x86-64 only")
    command = launcher.LaunchedCommand("/bin/true", ["true"])
    try:
        # It has run all it runs before the release: it waits on the release pipe.
        wait_until(lambda: in_read(command.pid), 60, "the launcher waits for its release")
        held = taskstats.query_pid(command.pid)
        assert held.comm.isdigit()  # /proc/self/fd/N: still the launcher
        assert held.wpcopy_count == 0
    finally:
        command.abandon()


def test_child_copies_counted_live_and_at_exit() -> None:
    """A child writing N inherited pages: wpcopy_count >= N, plus the interpreter's few."""
    n = 2048
    buf = _cow_buffer(n)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with taskstats.ExitListener() as listener:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                for i in range(n):
                    buf[i * PAGE] = 2
                os.write(ready_w, b"r")
                os.read(go_r, 1)
            finally:
                os._exit(0)
        assert os.read(ready_r, 1) == b"r"
        live = taskstats.query_pid(pid)
        start = _address(buf)
        private = smaps.private_dirty_in(pid, start, start + n * PAGE)
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        final = listener.wait_for(pid)
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)
    assert final is not None, "no exit record for the child"
    assert live.wpcopy_count is not None and final.wpcopy_count is not None
    # The interpreter's own pages (its heap, stack, the objects it touched) add a few hundred.
    assert n <= live.wpcopy_count <= n + 512
    assert live.wpcopy_count <= final.wpcopy_count <= n + 1024
    assert final.wpcopy_delay_total_ns and final.wpcopy_delay_total_ns > 0
    assert private >= n * PAGE  # more only if the kernel merged a neighbour into its VMA
    buf.close()


def _address(buf: mmap.mmap) -> int:
    """Where an mmap object's memory starts (the same address in a forked child)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def test_reuse_is_not_a_copy() -> None:
    """After the child exits, the parent's writes reuse its pages: wpcopy barely moves."""
    n = 2048
    buf = _cow_buffer(n)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    before = taskstats.query_pid(os.getpid()).wpcopy_count or 0
    for i in range(n):
        buf[i * PAGE] = 3
    after = taskstats.query_pid(os.getpid()).wpcopy_count or 0
    # Not pinned to one CPU: a few pages still in another CPU's LRU batch may be copied.
    assert after - before < 64
    buf.close()


@pytest.fixture(scope="module")
def oracle() -> ModuleType:
    return _load_oracle()


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fixture-bins")


_FIXTURE_NAMES = list(_load_oracle().build.FIXTURES) if _REASON is None else []


@pytest.mark.parametrize("name", _FIXTURE_NAMES)
def test_fixture_answers_match_delayacct(name: str, oracle: ModuleType, bin_dir: Path) -> None:
    """Every fixture process: mark->hold wpcopy delta == its copies + zero-fills, exactly."""
    binary = oracle.build.build_fixture(name, bin_dir)
    run = oracle.run_under_oracle(name, binary, oracle.build.FIXTURES[name], hold=True)
    assert run.processes, "the fixture printed no processes"
    for r in run.processes.values():
        label = f"{name}/{r.name} (pid {r.pid})"
        assert r.wpcopy_at_marks and r.wpcopy_at_hold is not None, label
        assert r.measured_delta == r.expected_wpcopy, label
        assert r.wpcopy_at_exit is not None, f"{label}: no exit record"
        # The C runtime's own pages: a handful per process (3-17 seen), never the buffers'.
        assert 0 <= r.wpcopy_at_exit - r.expected_wpcopy <= 48, label
        assert r.smaps_expected == r.smaps_measured, label
        assert r.smaps_expected, f"{label}: no smaps expectation"
    # Every process has an answer for every buffer of the fixture.
    facts = run.facts
    for pid in facts.processes:
        seen = {e.buffer for e in facts.expects if e.pid == pid}
        assert seen == set(facts.buffers), f"{name}: pid {pid} lacks answers for some buffers"


RETRIED_PAGES = 256


def test_a_copy_given_up_for_the_mmap_lock_counts_twice(oracle: ModuleType, bin_dir: Path) -> None:
    """The kernel's own book, no tracer (tests/fixtures/retried_copies.c): first writes to
    private file pages in mappings without an anon_vma.  Alone, the mark->hold delta is the N
    copies exactly.  With another thread holding the mmap_lock for writing, the kernel gives
    most copies up once and takes the fault again, and delay accounting counts both passes: the
    delta is N plus those (at most one per fault).  cowtrace counts them apart (wp_retries)."""
    binary = oracle.build.build_fixture("retried_copies", bin_dir)
    deltas = {}
    for contend in ("0", "1"):
        run = oracle.run_under_oracle(
            "retried_copies", binary, (str(RETRIED_PAGES), contend), hold=True
        )
        (result,) = run.processes.values()
        assert result.expected_wpcopy == RETRIED_PAGES
        deltas[contend] = result.measured_delta
    assert deltas["0"] == RETRIED_PAGES
    assert RETRIED_PAGES < deltas["1"] <= 2 * RETRIED_PAGES, deltas
