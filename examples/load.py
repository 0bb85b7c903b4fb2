"""A bounded load generator: N GET requests over C concurrent loopback connections.

One connection per request, as gunicorn's sync workers close each connection after answering.
Prints one JSON line: requests sent, answers that were 200, seconds taken, and the number of
requests each worker pid answered (read from the app's ``pid=`` reply).

    python load.py --port 8000 --requests 800 --concurrency 4
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


def one(host: str, port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(
            pool.map(lambda _: one(args.host, args.port, args.path), range(args.requests))
        )
    per_pid: Counter = Counter()
    for status, body in answers:
        if status == 200 and body.startswith("pid="):
            per_pid[int(body.split()[0][4:])] += 1
    result = {
        "requests": args.requests,
        "ok": sum(1 for status, _ in answers if status == 200),
        "seconds": round(time.monotonic() - started, 3),
        "per_pid": {str(pid): n for pid, n in sorted(per_pid.items())},
    }
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
