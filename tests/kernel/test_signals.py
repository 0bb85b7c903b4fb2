"""Signals at any moment of `cowtrace run`'s start-up: nothing of cowtrace outlives it.

Why: a tracer on a production host is stopped by whatever the operator or the init system
sends, whenever it comes. Once cowtrace has exited, none of its BPF programs may stay loaded,
none of its processes may live on, and the command either never started or died with it
(README, `run`). Each signal is sent at random moments between the start of `cowtrace run`
and a little after its command starts (the moments cover the interpreter's start, the BPF
compile and load, the launcher's spawn, the attach and the release: one random moment in each
of COWTRACE_SIGNAL_MOMENTS equal slices of that time), plus once within 0.3 s of the
launcher's spawn, the narrow window where a forked cowtrace used to be left behind. SIGINT
goes to the process group, as a terminal sends it, the others to cowtrace alone.

One window is CPython's, not cowtrace's: from the moment the interpreter installs its own
SIGINT handler until cowtrace's entry point (cowtrace/__main__.py) restores the default action,
the interpreter runs `site` and the editable install's import hook (about 10 ms here), and a
SIGINT there is a KeyboardInterrupt traceback from the standard library that no code of
cowtrace can catch. A SIGINT whose moment falls before cowtrace's entry point is sent as soon
as the entry point is reached (seen in /proc/PID/status: SIGINT caught by the interpreter, then
not caught); every later moment is kept.

Each moment costs about one start-up of cowtrace (2-3 s here), so the suite's default is 3
moments per signal (about a minute); the issue's acceptance figure is
COWTRACE_SIGNAL_MOMENTS=20 (about 5 minutes). COWTRACE_SIGNAL_SEED fixes the random seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (
    COWTRACE,
    _session_pids,
    cowtrace_programs_loaded,
    poll_until_empty,
    wait_until_unloaded,
)

MOMENTS = int(os.environ.get("COWTRACE_SIGNAL_MOMENTS", "3"))
SEED = int(os.environ.get("COWTRACE_SIGNAL_SEED", str(int(time.time()))))
COMMAND = ["sleep", "60"]  # far longer than any trial: a command left running shows
# A launcher killed by its death signal, or reading EOF, is gone a few ms after cowtrace;
# a forked copy of cowtrace used to live on for a second or more.
LEFTOVER_GRACE_S = 0.5


def _default_hangup() -> None:
    """In the child: SIGHUP at its default action, as from a terminal.  A suite started under
    nohup hands every process SIGHUP ignored, and cowtrace rightly keeps an ignored SIGHUP
    ignored (the user asked for it): the trial would then wait for an exit that never comes."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start() -> subprocess.Popen:
    """`cowtrace run` in a session of its own, so that SIGINT can go to its process group."""
    return subprocess.Popen(
        [*COWTRACE, "run", "--quiet", "--", *COMMAND],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_hangup,
    )


def command_started(tracer: subprocess.Popen) -> bool:
    """The launcher (cowtrace's only child) has become the command."""
    try:
        children = Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split()
        return any(Path(f"/proc/{c}/comm").read_text().strip() == COMMAND[0] for c in children)
    except OSError:
        return False


def _being_killed(pid: int) -> bool:
    """Whether the kernel has already queued SIGKILL for `pid` (a launcher's death signal, sent
    at cowtrace's exit): it is gone as soon as it next runs, which on a machine whose cores are
    all busy can be a while.  A process that would live on has none queued."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    kill_bit = 1 << (signal.SIGKILL - 1)
    return any(
        line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & kill_bit
        for line in status.splitlines()
    )


def leftovers() -> list[str]:
    """Live processes of this test session other than the test itself (zombies excluded:
    they hold nothing, and the harness' init reaps orphans when it gets to it; so are those
    the kernel is already killing)."""
    out = []
    for pid in _session_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state = stat[stat.rindex(")") + 2]
        if state not in "ZX" and not _being_killed(pid):
            out.append(f"{pid} ({stat[stat.index('(') + 1 : stat.rindex(')')]}, {state})")
    return out


def wait_no_leftovers() -> list[str]:
    return poll_until_empty(leftovers, LEFTOVER_GRACE_S, 0.05)


def kill_leftovers() -> None:
    for pid in _session_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def startup_s() -> float:
    """How long `cowtrace run` takes here until its command runs (one untimed run first)."""
    tracer = start()
    began = time.monotonic()
    try:
        while not command_started(tracer):
            assert tracer.poll() is None, tracer.stderr.read()
            assert time.monotonic() - began < 60, "cowtrace run did not start its command"
            time.sleep(0.01)
        return time.monotonic() - began
    finally:
        tracer.send_signal(signal.SIGTERM)
        tracer.wait(timeout=30)
        tracer.stderr.close()


def has_child(tracer: subprocess.Popen) -> bool:
    try:
        return bool(Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split())
    except OSError:
        return False


def sigint_caught(pid: int) -> bool | None:
    """Whether the process catches SIGINT now (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return None


def wait_for_sigint_moment(tracer: subprocess.Popen, moment: float) -> None:
    """Sleep until `moment` seconds after the spawn and, if cowtrace's entry point has not
    been reached by then, until it is (the interpreter's own start-up: see the module's
    docstring). The entry point is seen as SIGINT caught (the interpreter's handler), then
    not caught (the entry point's default action)."""
    began = time.monotonic()
    interpreter_handler_seen = False
    while True:
        caught = sigint_caught(tracer.pid)
        if caught is None:
            return
        if caught:
            interpreter_handler_seen = True
        elif interpreter_handler_seen:
            break
        time.sleep(0.0005)
    remaining = moment - (time.monotonic() - began)
    if remaining > 0:
        time.sleep(remaining)


def one_trial(signum: int, moment: float, after_spawn: bool = False) -> str | None:
    """Send `signum` `moment` seconds into start-up (or after the launcher's spawn); what
    went wrong, or None."""
    tracer = start()
    if after_spawn:
        deadline = time.monotonic() + 60
        while not has_child(tracer) and tracer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(moment)
    elif signum == signal.SIGINT:
        wait_for_sigint_moment(tracer, moment)
    else:
        time.sleep(moment)
    if signum == signal.SIGINT:
        os.killpg(tracer.pid, signum)
    else:
        tracer.send_signal(signum)
    try:
        returncode = tracer.wait(timeout=30)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait()
        kill_leftovers()
        return "cowtrace did not exit within 30 s"
    finally:
        stderr = tracer.stderr.read()
        tracer.stderr.close()
    problems = []
    if returncode not in (-signum, 128 + signum):
        problems.append(f"exit status {returncode}")
    if "Traceback" in stderr or "internal error" in stderr:
        problems.append(f"stderr: {stderr.strip()[-400:]}")
    # At cowtrace's exit no process of this session may hold a program of cowtrace: the kernel
    # then frees them (wait_until_unloaded, in the autouse check, allows for that delay).
    held = cowtrace_programs_loaded()
    if held:
        problems.append(f"BPF programs still held: {held}")
    left = wait_no_leftovers()
    if left:
        kill_leftovers()
        problems.append(f"processes left: {left}")
    loaded = wait_until_unloaded()
    if loaded:
        problems.append(f"BPF programs left: {loaded}")
    return "; ".join(problems) or None


@pytest.mark.parametrize(
    "signum",
    [signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP],
    ids=lambda s: signal.Signals(s).name,
)
def test_signal_at_random_moments_of_start_up(signum: int, startup_s: float) -> None:
    assert not leftovers(), "processes of an earlier test still run"
    rng = random.Random(SEED + signum)
    failures = []
    # Stratified: one random moment in each of MOMENTS equal slices of the start-up.
    span = startup_s * 1.2 / MOMENTS
    for index in range(MOMENTS):
        moment = rng.uniform(index * span, (index + 1) * span)
        problem = one_trial(signum, moment)
        if problem:
            failures.append(f"at {moment:.3f} s: {problem}")
    # The narrow window that matters most: the launcher exists, the command is not released.
    moment = rng.uniform(0.0, 0.3)
    problem = one_trial(signum, moment, after_spawn=True)
    if problem:
        failures.append(f"{moment:.3f} s after the spawn: {problem}")
    name = signal.Signals(signum).name
    assert not failures, f"{name} (seed {SEED}, start-up {startup_s:.2f} s): " + " | ".join(
        failures
    )
