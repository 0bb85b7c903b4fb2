"""An attribution sink for tests that logs the lifecycle calls it is given.

The unit tests of the tracing core and the kernel tests of the attribution records both check
what the session feeds the sink, in order; each subclass logs the batches its own way."""

from __future__ import annotations

from typing import Any

from cowtrace.attribution.sink import NullSink


class LoggingSink(NullSink):
    """Accepts everything, as NullSink does; logs adoption, fork, exec and exit in `calls`."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def adopt(self, pid: int, parent: int | None, *, recover_heap: bool) -> None:
        self.calls.append(("adopt", pid, parent, recover_heap))

    def on_fork(self, ts_ns: int, parent: int, child: int) -> None:
        self.calls.append(("fork", parent, child))

    def on_exec(self, ts_ns: int, pid: int) -> None:
        self.calls.append(("exec", pid))

    def on_exit(self, ts_ns: int, pid: int) -> None:
        self.calls.append(("exit", pid))
