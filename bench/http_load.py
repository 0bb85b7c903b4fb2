"""A small HTTP load loop for bench/servers.py's twin method: short slices, no start-up.

The twin method loads two servers in turns, in slices of a fraction of a second, so that both
see the same moment of this VM's CPU. `wrk` takes whole seconds and is a new process per
slice; this loop is one process, started once and pinned to the load CPU, that loads the
port it is told for the time it is told:

    stdin:  PORT SECONDS          stdout: REQUESTS ELAPSED

It keeps CONCURRENCY requests in flight, each on a connection of its own (gunicorn's sync
workers close the connection after every response, as `wrk` sees them do), checks every
answer is a 200, and at the end of the slice opens no new connection but lets the ones in
flight finish: the server is idle again when the next slice (the other twin's) begins, and
every request whose CPU the server spent is counted. ELAPSED runs from the first connect to
the last response.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import subprocess
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
STALL_S = 30.0  # no answer for this long: the server is gone


def load_slice(port: int, seconds: float, concurrency: int) -> tuple[int, float]:
    """(responses, seconds from the first connect to the last response)."""
    selector = selectors.DefaultSelector()

    def connect() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE, [])

    start = time.perf_counter()
    deadline = start + seconds
    done, last = 0, start
    for _ in range(concurrency):
        connect()
    while selector.get_map():
        events = selector.select(timeout=STALL_S)
        if not events:
            raise TimeoutError(f"127.0.0.1:{port} answered nothing for {STALL_S} s")
        for key, mask in events:
            sock, chunks = key.fileobj, key.data
            if mask & selectors.EVENT_WRITE:
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise ConnectionError(f"connect to 127.0.0.1:{port}: errno {error}")
                sock.sendall(REQUEST)  # a few dozen bytes: the socket buffer takes them
                selector.modify(sock, selectors.EVENT_READ, chunks)
                continue
            data = sock.recv(65536)
            if data:
                chunks.append(data)
                continue
            selector.unregister(sock)
            sock.close()
            head = b"".join(chunks)[:12]
            if head != b"HTTP/1.1 200":
                raise RuntimeError(f"127.0.0.1:{port} answered {head!r}")
            done += 1
            last = time.perf_counter()
            if last < deadline:
                connect()
    selector.close()
    return done, last - start


class HttpLoad:
    """The loop as a process of its own pinned to `cpu`, for the benchmark to drive."""

    def __init__(self, reaper, cpu: int, concurrency: int) -> None:
        self.reaper = reaper
        self.proc = reaper.start(
            ["taskset", "-c", str(cpu), sys.executable, __file__,
             "--concurrency", str(concurrency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def load(self, port: int, seconds: float) -> tuple[int, float]:
        self.proc.stdin.write(f"{port} {seconds}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the HTTP load loop ended ({self.proc.wait()})")
        requests, elapsed = line.split()
        return int(requests), float(elapsed)

    def close(self) -> None:
        self.proc.stdin.close()  # its loop ends at the end of its input
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.reaper.stop(self.proc, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    args = parser.parse_args()
    for line in sys.stdin:
        port, seconds = line.split()
        done, elapsed = load_slice(int(port), float(seconds), args.concurrency)
        print(done, f"{elapsed:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
