"""A tiny pre-fork server whose copy-on-write behaviour is known in advance.

It exists so that ``cowtrace`` has something to show on any machine (``make demo``) and so the
tracer can be checked against a family whose shape is designed, not guessed. Standard library
only, so it runs under any interpreter the user has.

The master builds ``--mib`` MiB of state in a *private* anonymous mapping (Python's default
``mmap`` is MAP_SHARED, which never copies) and forks ``--workers`` workers that write into it:

- ``slow`` workers touch a few new pages per tick: a slow, steady climb;
- ``fast`` workers touch many new pages per tick: they copy the most;
- ``rewrite`` workers rewrite the same small region every tick: they copy it once, then
  flatten out, because a page is copied only on its first write.

Worker 1 retires after ``--replace-after`` seconds (as ``max_requests`` makes gunicorn workers
do), writing a burst of pages on its way out (exit-time copies), and the master forks a
replacement that starts copying from zero. SIGTERM or SIGINT (or ``--duration``) makes the
master terminate and reap every worker, then exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

PAGE = mmap.PAGESIZE
TICK = 0.1  # seconds between a worker's rounds of writes, and between master checks
PATTERNS = ("slow", "fast", "rewrite")
REAP_TIMEOUT = 5.0  # seconds the master waits for workers after SIGTERM before SIGKILL

_stop = False


def _request_stop(signum: int, frame: FrameType | None) -> None:
    """Only set a flag: the loops notice within a tick, and nothing unsafe runs in a handler.

    Installed before any fork, so a worker signalled before it set up its own handling stops
    cleanly too.
    """
    global _stop
    _stop = True


def set_comm(name: str) -> None:
    """Name the process as ps, top and cowtrace show it (the kernel keeps 15 bytes)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # cosmetic only


@dataclass(frozen=True)
class Worker:
    """What one worker does: its number (for its name), write pattern and planned lifetime."""

    number: int
    pattern: str
    lifetime: float | None = None  # seconds until it retires by itself; None: until stopped

    @property
    def name(self) -> str:
        return f"demo-worker-{self.number}"


def pages_per_tick(pattern: str, pages: int) -> int:
    """Write rates scaled to the buffer, so small test sizes keep the same shape.

    With 64 MiB (16384 pages): slow 4 pages per tick (160 KiB/s), fast 81 (3.2 MiB/s, all of
    the buffer in about 20 s), rewrite a 512-page (2 MiB) region.
    """
    if pattern == "slow":
        return max(1, pages // 4000)
    if pattern == "fast":
        return max(1, pages // 200)
    return max(1, pages // 32)


def run_worker(buf: mmap.mmap, worker: Worker, master: int) -> int:
    """The worker loop: write ``pattern`` pages each tick until stopped, retired or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's to handle
    set_comm(worker.name)
    pages = len(buf) // PAGE
    step = pages_per_tick(worker.pattern, pages)
    # Start each worker somewhere else in the buffer, so they do not copy the same pages first.
    cursor = (worker.number * pages // 3) % pages
    started = time.monotonic()
    tick = 0
    while not _stop and os.getppid() == master:
        if worker.lifetime is not None and time.monotonic() - started >= worker.lifetime:
            # Exit-time copies: a last burst of writes just before exit, like cleanup code.
            touch(buf, cursor, max(1, pages // 64), tick)
            return 0
        if worker.pattern == "rewrite":
            touch(buf, 0, step, tick)
        else:
            touch(buf, cursor, step, tick)
            cursor = (cursor + step) % pages
        tick += 1
        time.sleep(TICK)
    return 0


def touch(buf: mmap.mmap, first: int, count: int, value: int) -> None:
    """Write one byte into each of ``count`` pages from page ``first`` on, wrapping around."""
    pages = len(buf) // PAGE
    byte = value & 0xFF
    for i in range(count):
        buf[((first + i) % pages) * PAGE] = byte


def build_state(mib: int) -> mmap.mmap:
    """The master's preloaded state: private anonymous memory, every page written once.

    Writing each page makes it a real anonymous page (not the shared zero page), so after
    fork every worker's first write to it is a copy.
    """
    size = max(1, mib) * 1024 * 1024
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    chunk = b"\xa5" * (1024 * 1024)
    for offset in range(0, size, len(chunk)):
        buf[offset : offset + len(chunk)] = chunk
    return buf


def spawn(buf: mmap.mmap, worker: Worker) -> int:
    """Fork one worker; in the child, run it and leave with os._exit (no parent cleanup)."""
    master = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_worker(buf, worker, master)
        finally:
            os._exit(code)
    return pid


def stop_workers(workers: dict[int, Worker]) -> None:
    """SIGTERM every worker, wait for all of them, SIGKILL any that outstay REAP_TIMEOUT."""
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + REAP_TIMEOUT
    while workers:
        for pid in list(workers):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                del workers[pid]
        if workers and time.monotonic() > deadline:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        if workers:
            time.sleep(0.02)


def reap(workers: dict[int, Worker]) -> list[Worker]:
    """Collect workers that exited by themselves; return what they were, to replace them."""
    gone = []
    while workers:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in workers:
            gone.append(workers.pop(pid))
    return gone


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cowtrace.demo_app",
        description="A pre-fork demo whose workers break copy-on-write at known rates.",
    )
    parser.add_argument("--workers", type=int, default=3, help="workers to fork (default 3)")
    parser.add_argument("--mib", type=int, default=64, help="MiB of shared state (default 64)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds before exiting (default 20)"
    )
    parser.add_argument(
        "--replace-after",
        type=float,
        default=8.0,
        help="seconds before worker 1 retires and is replaced (default 8; 0: never)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    set_comm("demo-master")
    buf = build_state(args.mib)

    workers: dict[int, Worker] = {}
    for number in range(1, args.workers + 1):
        lifetime = args.replace_after if number == 1 and args.replace_after > 0 else None
        worker = Worker(number, PATTERNS[(number - 1) % len(PATTERNS)], lifetime)
        workers[spawn(buf, worker)] = worker
    next_number = args.workers + 1
    print(
        f"demo_app: master {os.getpid()} ({args.mib} MiB private state),"
        f" workers {' '.join(map(str, workers))}",
        file=sys.stderr,
        flush=True,
    )

    deadline = time.monotonic() + args.duration
    while not _stop and time.monotonic() < deadline:
        for retired in reap(workers):
            # Like a pre-fork server: a worker that left is replaced by a fresh fork, which
            # shares the master's pages again and copies them again from zero.
            replacement = Worker(next_number, retired.pattern)
            next_number += 1
            workers[spawn(buf, replacement)] = replacement
        time.sleep(TICK)
    stop_workers(workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
