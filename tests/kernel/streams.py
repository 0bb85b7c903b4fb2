"""A child's output collected line by line on a thread, and answers on its stdin: how the
kernel tests wait for a fixture, a plain view or cowtrace's log by readiness, not time; and
the container and side-by-side tests' fixture dialogue (tests/fixtures/py_prefork.py).

(Not select() on the pipe: a text stream's readline buffers whatever else arrived with the
line, and select() then waits for more data while those lines sit unread.)"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from typing import IO


class Lines:
    """Every line of `stream`, read by a thread until its end."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first line (since the start) matching `pattern`, waiting up to `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                assert left > 0 and not self._ended, f"no line matching {pattern!r}: {self.lines}"
                self._cond.wait(left)

    def wait_for_all(self, patterns: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for pattern in patterns:
            self.wait_for(pattern, max(0.0, deadline - time.monotonic()))

    def text(self, timeout: float = 30.0) -> str:
        """Everything, once the stream has ended."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        return "".join(self.lines)


def send(process: subprocess.Popen, line: str) -> None:
    process.stdin.write(line + "\n")
    process.stdin.flush()


class Prefork:
    """tests/fixtures/py_prefork.py's dialogue, through the process whose stdin and stdout are
    the fixture's: the fixture itself, or the `cowtrace run` (or container) that runs it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.output = Lines(process.stdout)

    def ready(self, timeout: float = 60.0) -> None:
        """The fixture has set its buffers up and waits for `go` (a tracer attaches now)."""
        self.output.wait_for(r"^ready$", timeout)

    def fork(self) -> dict[str, int]:
        """`go`: it forks c1 and c2; their pids as the fixture sees them, by name."""
        send(self.process, "go")
        return json.loads(self.output.wait_for(r'^\{"children"', 30))["children"]

    def write(self) -> dict:
        """`write`: the children write, one after the other, and exit; the fixture's facts."""
        send(self.process, "write")
        return json.loads(self.output.wait_for(r'^\{"pid"', 60))

    def exit(self) -> None:
        send(self.process, "exit")
