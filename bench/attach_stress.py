"""Attach to a gunicorn master under load N times in a row; count cowtrace's internal errors.

Issue 15, item 3: a rare `OSError: [Errno 9] Bad file descriptor` at attach.  Its cause was
bcc 0.26's symbol caches closing a descriptor they did not own (iovisor/bcc#5193); cowtrace
now names native frames itself (cowtrace/host/symbols.py).  This is the stress check: each
round attaches `cowtrace PID --plain --duration SECONDS` (with --malloc, so the heap walk and
the allocator probes run too) to the same master while wrk keeps its workers busy, and reads
its exit status and stderr.  Zero internal errors is the pass mark.

    sudo .venv/bin/python bench/attach_stress.py --attaches 50
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cli_arms import COWTRACE, Reaper  # noqa: E402
from bench.servers import Gunicorn  # noqa: E402
from tests.e2e import free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attaches", type=int, default=50)
    parser.add_argument("--duration", type=float, default=1.0, help="each attach traces this long")
    parser.add_argument("--records", type=int, default=100_000, help="gunicorn's table")
    args = parser.parse_args()
    server = Gunicorn(argparse.Namespace(records=args.records, seconds=1), Path("."))
    errors: list[str] = []
    statuses: list[int] = []
    with Reaper() as reaper:
        port = free_port()
        master = reaper.start(server.command(port), env={**os.environ, **server.env()})
        server.ready(master.pid, port)
        load = reaper.start(
            [
                "wrk",
                "-t1",
                "-c4",
                f"-d{int(args.attaches * (args.duration + 6)) + 60}s",
                f"http://127.0.0.1:{port}/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        for number in range(1, args.attaches + 1):
            done = subprocess.run(
                [
                    *COWTRACE,
                    str(master.pid),
                    "--plain",
                    "--malloc",
                    "--duration",
                    str(args.duration),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "COWTRACE_DEBUG": "1"},
                timeout=300,
            )
            statuses.append(done.returncode)
            if done.returncode != 0 or "internal error" in done.stderr or "Errno" in done.stderr:
                errors.append(f"attach {number}: exit {done.returncode}: {done.stderr.strip()}")
            print(f"attach {number}: exit {done.returncode}", flush=True)
        reaper.kill(load)
    elapsed = time.monotonic() - started
    print(
        f"\n{args.attaches} attaches in {elapsed:.0f} s; exit statuses {sorted(set(statuses))}; "
        f"internal errors: {len(errors)}"
    )
    for error in errors:
        print(error)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
