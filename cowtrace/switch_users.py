"""A system-wide switch several cowtrace processes share: put back only by the last user.

`--delayacct` turns `kernel.task_delayacct` on and puts it back at exit.  Two cowtrace at once
(an agent and a `trace` of the same family) would otherwise break each other: the first to
exit would switch delay accounting off under the other, or the second would "restore" the on
state the first had set.  So each user registers a file named after its pid in a directory
under /run and holds an flock on it for as long as it uses the switch (a lock that can be
taken is a user that died without cleaning up: its file is removed).  The state before the
first user is written beside them; the last user to leave restores it.  Within one process
uses are counted, so nested enable/restore pairs (tests) work too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

USERS_ROOT = Path("/run/cowtrace")


def read_users(directory: Path, besides: int | None = None) -> Iterator[tuple[Path, bool]]:
    """Each user file of a switch (but the one of pid `besides`) and whether its user is alive:
    its owner holds the lock on it; a lock that can be taken is a user that died without
    leaving.  Only reads: removing the dead is the switch's, under its lock.  No directory: no
    user yet."""
    try:
        paths = list(directory.iterdir())
    except FileNotFoundError:
        return
    for path in paths:
        if not path.name.isdigit() or int(path.name) == besides:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield path, True
        else:
            yield path, False  # the probe's lock is held until the close, after the caller
        finally:
            os.close(fd)


class SharedSwitch:
    """Users of one switch: `acquire(turn_on)` / `release(turn_off)` around each use."""

    def __init__(self, name: str, root: Path = USERS_ROOT) -> None:
        self.directory = root / name
        self._held: int | None = None  # fd of this process' own user file, locked
        self._uses = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _other_users(self) -> list[Path]:
        """Live users besides this process; files of dead ones are removed (under the lock:
        no user is between creating its file and locking it)."""
        live = []
        for path, alive in read_users(self.directory, besides=os.getpid()):
            if alive:
                live.append(path)
            else:
                path.unlink(missing_ok=True)  # nobody holds it: its owner died
        return live

    def acquire(self, turn_on: Callable[[], bool]) -> bool:
        """Register this process as a user; the first user of all calls `turn_on` (which
        returns the state before) and records it.  Returns the state before the first user."""
        with self._locked():
            before_path = self.directory / "before"
            if not self._other_users() and self._held is None:
                before = turn_on()
                if not before_path.exists():  # else a user died before restoring: keep its
                    before_path.write_text("1\n" if before else "0\n")
            if self._held is None:
                fd = os.open(self.directory / str(os.getpid()), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._held = fd
            self._uses += 1
            try:
                return before_path.read_text().strip() == "1"
            except FileNotFoundError:
                return True

    def release(self, turn_off: Callable[[], None]) -> bool:
        """Leave; the last user of all calls `turn_off` when the switch was off before.
        False when this process was not registered (then the caller decides alone)."""
        if self._held is None:
            return False
        self._uses -= 1
        if self._uses > 0:
            return True
        with self._locked():
            (self.directory / str(os.getpid())).unlink(missing_ok=True)
            os.close(self._held)
            self._held = None
            if self._other_users():
                return True
            before_path = self.directory / "before"
            try:
                before = before_path.read_text().strip() == "1"
            except FileNotFoundError:
                before = True
            before_path.unlink(missing_ok=True)
            if not before:
                turn_off()
        return True
