"""Redis BGSAVE while a client keeps rewriting keys: the workload Redis' CoW report is about.

Talks RESP over a plain loopback socket (no client library needed). Steps, each reported as a
JSON line on stdout:
1. ``DEBUG POPULATE KEYS key VALUE_SIZE`` fills the dataset (needs
   ``--enable-debug-command yes``); values stay under 2 KiB, because Redis 7 releases larger
   values from the child once saved, and then the parent's later writes copy nothing;
2. ``CONFIG SET rdb-key-save-delay DELAY`` stretches the save (a negative value sleeps 1 µs on
   one key in ``-DELAY``), then ``BGSAVE`` forks the child;
3. while the child lives, every ``EVERY``-th key is rewritten with a new value of the same size;
4. with ``--hold``, it prints ``writes_done`` and waits for a line on stdin (an observer can
   read the kernel's books while the child still saves);
5. it waits for the save to end and prints Redis' own figures from INFO persistence
   (``rdb_last_cow_size``: the child's Private_Dirty when it finished, in bytes).

    python bgsave_writes.py --port 6379 --keys 100000 --value-size 1000 --every 10
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


class Resp:
    """A minimal RESP2 client: send commands (pipelined), read the replies."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    @staticmethod
    def encode(*args: str | bytes | int) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected RESP reply {line!r}")

    def call(self, *args: str | bytes | int) -> object:
        self.sock.sendall(self.encode(*args))
        return self.reply()

    def pipeline(self, commands: list[tuple]) -> list[object]:
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        return [self.reply() for _ in commands]

    def info(self, section: str) -> dict[str, str]:
        text = self.call("INFO", section)
        assert isinstance(text, bytes)
        out = {}
        for line in text.decode().splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                out[key] = value
        return out


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=1000)
    parser.add_argument("--every", type=int, default=10, help="rewrite every N-th key")
    parser.add_argument("--delay", type=int, default=-2, help="rdb-key-save-delay")
    parser.add_argument("--populate", action="store_true", help="run DEBUG POPULATE first")
    parser.add_argument("--hold", action="store_true", help="wait for stdin after the writes")
    args = parser.parse_args()
    if args.value_size >= 2048:
        parser.error("keep values under 2 KiB (see the module docstring)")

    client = Resp(args.port)
    if args.populate:
        client.call("FLUSHALL")
        client.call("DEBUG", "POPULATE", args.keys, "key", args.value_size)
        emit(populated=client.call("DBSIZE"))
        return 0

    client.call("CONFIG", "SET", "rdb-key-save-delay", args.delay)
    started = time.monotonic()
    emit(bgsave=client.call("BGSAVE"))
    value = b"w" * args.value_size
    rewritten = 0
    batch: list[tuple] = []
    for i in range(0, args.keys, args.every):
        batch.append(("SET", f"key:{i}", value))
        if len(batch) == 500:
            client.pipeline(batch)
            rewritten += len(batch)
            batch = []
    if batch:
        client.pipeline(batch)
        rewritten += len(batch)
    persistence = client.info("persistence")
    emit(
        writes_done=rewritten,
        seconds=round(time.monotonic() - started, 3),
        child_alive=persistence["rdb_bgsave_in_progress"] == "1",
    )
    if args.hold:
        sys.stdin.readline()
    while client.info("persistence")["rdb_bgsave_in_progress"] == "1":
        time.sleep(0.05)
    persistence = client.info("persistence")
    emit(
        save_seconds=round(time.monotonic() - started, 3),
        rdb_last_bgsave_status=persistence["rdb_last_bgsave_status"],
        rdb_last_cow_size=int(persistence["rdb_last_cow_size"]),
    )
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
