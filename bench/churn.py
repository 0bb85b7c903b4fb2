"""A pre-fork master whose workers are recycled many times a second: the soak's workload.

It stands in for gunicorn `--preload --max-requests`: the master builds a table of Python
objects at start, keeps `--workers` forked workers alive, and replaces each one as it exits.
A worker reads a random slice of the table (refcount writes: copies, with Python and native
writer stacks), sometimes runs `gc.collect()`, maps and unmaps a little anonymous memory
(map changes), and exits after `--life` seconds (jittered), like a worker reaching
max-requests.  With `--family-life` the master itself ends after that many seconds (its
workers with it), so that a driver can start families one after another.

    python3 bench/churn.py --workers 2 --life 0.2 --records 20000 --name cowchurn
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import mmap
import os
import random
import signal
import sys
import time


def set_comm(name: str) -> None:
    """prctl(PR_SET_NAME): the name the agent's --comm matches (ps shows it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)


def build(n: int) -> list[dict]:
    return [{"id": i, "name": f"rec-{i:08d}", "score": i * 0.5, "tags": [i % 7]} for i in range(n)]


def work(table: list[dict], life_s: float, seed: int) -> None:
    """One worker's life: touch records, churn a little memory, then exit."""
    rng = random.Random(seed)
    deadline = time.monotonic() + life_s
    total = 0.0
    while time.monotonic() < deadline:
        for _ in range(200):
            total += table[rng.randrange(len(table))]["score"]
        if rng.random() < 0.1:
            gc.collect()
        if rng.random() < 0.2:
            buf = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            buf[:: mmap.PAGESIZE] = b"x" * (len(buf) // mmap.PAGESIZE)
            buf.close()
        time.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--life", type=float, default=0.2, help="seconds a worker lives")
    parser.add_argument("--jitter", type=float, default=0.25, help="share of --life, +-")
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--name", default="cowchurn", help="comm of the master and workers")
    parser.add_argument("--family-life", type=float, default=0.0, help="0: until SIGTERM")
    args = parser.parse_args()

    set_comm(args.name)
    table = build(args.records)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers: set[int] = set()
    spawned = 0
    ends = None if args.family_life <= 0 else time.monotonic() + args.family_life
    print(f"ready {os.getpid()}", flush=True)
    while not stopping and (ends is None or time.monotonic() < ends):
        while len(workers) < args.workers:
            spawned += 1
            life = args.life * (1 + args.jitter * (2 * random.random() - 1))
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                try:
                    work(table, life, spawned)
                finally:
                    os._exit(0)
            workers.add(pid)
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            continue
        except InterruptedError:
            continue
        workers.discard(pid)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in workers:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    print(f"spawned {spawned}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
