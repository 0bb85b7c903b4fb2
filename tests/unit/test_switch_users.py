"""switch_users.py: a system-wide switch shared by several cowtrace processes is put back
only by the last of them, to the state before the first."""

from __future__ import annotations

import multiprocessing
import os
import select
import time
from pathlib import Path

from cowtrace.switch_users import SharedSwitch


class Sysctl:
    def __init__(self, on: bool) -> None:
        self.on = on
        self.writes = 0

    def turn_on(self) -> bool:
        before, self.on = self.on, True
        self.writes += not before
        return before

    def turn_off(self) -> None:
        self.on = False
        self.writes += 1


def _hold(root: str, ready: int) -> None:
    """Another cowtrace process: it uses the switch until killed (no lock shared with the
    test, which a SIGKILL could leave taken)."""
    switch = SharedSwitch("delayacct", Path(root))
    switch.acquire(lambda: True)  # it finds the switch on
    os.write(ready, b"1")
    time.sleep(60)


def test_nested_uses_in_one_process_restore_once(tmp_path: Path) -> None:
    sysctl = Sysctl(on=False)
    switch = SharedSwitch("delayacct", tmp_path)
    assert switch.acquire(sysctl.turn_on) is False
    assert switch.acquire(sysctl.turn_on) is False  # the state before the first use
    assert switch.release(sysctl.turn_off) and sysctl.on
    assert switch.release(sysctl.turn_off) and not sysctl.on
    assert not switch.release(sysctl.turn_off)  # not registered any more
    assert sorted(p.name for p in (tmp_path / "delayacct").iterdir()) == [".lock"]


def test_the_last_user_restores_and_a_dead_user_does_not_count(tmp_path: Path) -> None:
    sysctl = Sysctl(on=False)
    context = multiprocessing.get_context("fork")
    mine = SharedSwitch("delayacct", tmp_path)
    assert mine.acquire(sysctl.turn_on) is False  # first: switches it on
    ready_r, ready_w = os.pipe()
    other = context.Process(target=_hold, args=(str(tmp_path), ready_w))
    other.start()
    try:
        assert select.select([ready_r], [], [], 30)[0], "the other process never got the switch"
        assert os.read(ready_r, 1) == b"1"
        mine.release(sysctl.turn_off)
        assert sysctl.on  # the other process still uses it
        assert mine.acquire(sysctl.turn_on) is False  # rejoins: "before" is still "off"
        os.kill(other.pid, 9)  # dies without releasing: its lock goes with it
        other.join(30)
        mine.release(sysctl.turn_off)
        assert not sysctl.on and sysctl.writes == 2
    finally:
        if other.is_alive():
            other.kill()
        other.join(30)
        os.close(ready_r)
        os.close(ready_w)
