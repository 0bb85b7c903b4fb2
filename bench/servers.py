"""Real servers under load: untraced vs `cowtrace PID` vs `cowtrace run` vs `cowtrace agent`.

Issue 12's second promise: the traced server keeps >= 98% of its throughput when attached to
or watched by the agent, >= 95% under `run` (defaults: allocation attribution on).

Servers (everything on 127.0.0.1):
  gunicorn   examples/gunicorn/app.py, --preload, 2 sync workers, a preloaded table of
             --records records; load: `wrk -t1 -c4 -d SECONDS`;
  redis      Debian's redis-server 7 (jemalloc), no persistence (no fork); load:
             `redis-benchmark -c 8 -d 200 -t set,get,lpush,lpop -n N`.
Arms:
  untraced   the server alone;
  attach     `cowtrace PID` attached to the running server (defaults);
  run        `cowtrace run -- SERVER` (defaults: allocator uprobes, writer stacks);
  agent      `cowtrace agent --comm '^COMM$'` watching the server;
  control    untraced again: what the method reads when nothing differs.
The server's threads are pinned to CPU 0 once it is up, the load generator to CPU 1;
cowtrace is not pinned (its own work competes, as it would in production).

Two methods, because two servers started one after the other differ by more than the 1-2%
to be measured (untraced Redis ranged 73k-89k req/s from one start to the next here):
  same server (attach, agent, control)  one server is started, pinned and warmed once; then
      --pairs times, for each arm, a period without cowtrace and a period with the arm's
      cowtrace attached to that same server (started, attached, warmed for --warmup
      seconds, measured, stopped), in the order A B, then B A, then A B... The figure is the
      median over pairs of the period ratio.  The control pairs two untraced periods.
  fresh servers (run)  `run` must start its server, so each round starts an untraced server
      and a server under `cowtrace run`, alternating which goes first (--rounds rounds).
Each measured period warms up first (--warmup seconds of load), then measures one load run.

Usage (root): .venv/bin/python bench/servers.py [--pairs 7] [--rounds 5]
    [--server gunicorn,redis] [--arms attach,run,agent,control] [--seconds 5] [--warmup 2]
    [--records 100000] [--redis-requests 100000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cli_arms import (
    Reaper,
    family_cpu_ns,
    machine_note,
    pin_family,
    start_agent,
    start_attach,
    start_run,
)

from tests.e2e import EXAMPLES, family_of, free_port, wait_port

SERVER_CPU, LOAD_CPU = 0, 1
ALL_ARMS = ("untraced", "attach", "run", "agent", "control")
TARGETS = {"attach": 0.98, "agent": 0.98, "run": 0.95}


@dataclass
class Load:
    requests: int
    seconds: float


class Gunicorn:
    name = "gunicorn"
    comm = "gunicorn"
    workers = 2

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from tests.kernel.test_examples_gunicorn import PY311, gunicorn_venv

        self.venv = gunicorn_venv(PY311)
        self.records = args.records
        self.seconds = args.seconds

    def command(self, port: int) -> list[str]:
        return [
            str(self.venv / "bin/gunicorn"), "--preload", "--workers", str(self.workers),
            "--worker-class", "sync", "--bind", f"127.0.0.1:{port}",
            "--chdir", str(EXAMPLES / "gunicorn"), "--log-level", "warning", "app:app",
        ]

    def env(self) -> dict[str, str]:
        return {"APP_RECORDS": str(self.records)}

    def ready(self, root: int, port: int) -> None:
        wait_port(port, timeout=120)
        deadline = time.monotonic() + 60
        while len(family_of(root)) < self.workers + 1:
            if time.monotonic() > deadline:
                raise TimeoutError("gunicorn did not start its workers")
            time.sleep(0.05)

    def warm(self, port: int, seconds: float) -> None:
        if seconds > 0:
            self.load(port, seconds)

    def load(self, port: int, seconds: float) -> Load:
        out = subprocess.run(
            ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", "-c4", f"-d{max(1, round(seconds))}s",
             f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True,
        ).stdout
        match = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
        if match is None:
            raise RuntimeError(f"cannot read wrk's output: {out}")
        scale = {"ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(3)]
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"wrk saw errors: {out}")
        return Load(int(match.group(1)), float(match.group(2)) * scale)


class Redis:
    name = "redis"
    comm = "redis-server"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.requests = args.redis_requests
        self.dir = workdir

    def command(self, port: int) -> list[str]:
        return [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--logfile", "",
        ]

    def env(self) -> dict[str, str]:
        return {}

    def ready(self, root: int, port: int) -> None:
        wait_port(port, timeout=60)

    def warm(self, port: int, seconds: float) -> None:
        if seconds > 0:
            self.load(port, seconds, requests=max(1000, self.requests // 10))

    def load(self, port: int, seconds: float, requests: int | None = None) -> Load:
        """SET, GET, LPUSH, LPOP: `requests` each; the time is the sum of each test's."""
        n = requests or self.requests
        out = subprocess.run(
            ["taskset", "-c", str(LOAD_CPU), "redis-benchmark", "-p", str(port), "-c", "8",
             "-d", "200", "-t", "set,get,lpush,lpop", "-n", str(n), "--csv"],
            capture_output=True, text=True, check=True,
        ).stdout
        rows = [line.split(",") for line in out.splitlines() if line.startswith('"')]
        rates = [float(row[1].strip('"')) for row in rows if row[0].strip('"') != "test"]
        if len(rates) != 4:
            raise RuntimeError(f"cannot read redis-benchmark's output: {out}")
        return Load(n * 4, sum(n / rate for rate in rates))


@dataclass
class Measure:
    rps: float
    cpu_per_request_us: float


def loaded(server, root: int, port: int, args: argparse.Namespace) -> Measure:
    """Warm the running server up, then load it for --seconds: its requests per second and
    the CPU time its whole family spent per request."""
    server.warm(port, args.warmup)
    cpu_before = family_cpu_ns(root)
    load = server.load(port, args.seconds)
    cpu = family_cpu_ns(root) - cpu_before
    return Measure(load.requests / load.seconds, cpu / 1e3 / load.requests)


def measure(server, arm: str, args: argparse.Namespace, reaper: Reaper) -> Measure:
    """Start the server (under its arm), load it, measure, and stop everything."""
    port = free_port()
    env = {**os.environ, **server.env()}
    out = subprocess.DEVNULL
    # (process, the signal that ends it cleanly): cowtrace writes its summary on SIGINT; a
    # server and `cowtrace run` (which passes it on to its command) end on SIGTERM.
    started: list[tuple[subprocess.Popen, int]] = []
    try:
        if arm == "agent":
            agent, agent_err, _url = start_agent(reaper, ["--comm", f"^{server.comm}$"])
            started.append((agent, signal.SIGINT))
        if arm == "run":
            tracer, root = start_run(reaper, server.command(port), env=env, stdout=out,
                                     stderr=out)
            started.append((tracer, signal.SIGTERM))
        else:
            proc = reaper.start(server.command(port), env=env, stdout=out, stderr=out)
            started.append((proc, signal.SIGTERM))
            root = proc.pid
        server.ready(root, port)
        if arm == "attach":
            started.append((start_attach(reaper, root), signal.SIGINT))
        if arm == "agent":
            agent_err.wait_for(rf"tracing \S+ \(pid {root}\)", timeout=60)
        pin_family(root, SERVER_CPU)
        return loaded(server, root, port, args)
    finally:
        for proc, signum in reversed(started):  # an attached tracer before its server
            reaper.stop(proc, signum, timeout=30)


SAME_SERVER_ARMS = ("attach", "agent", "control")


def start_tracer(server, arm: str, root: int, reaper: Reaper) -> list[tuple[subprocess.Popen, int]]:
    """The arm's cowtrace on a running server, returned once it traces it."""
    if arm == "attach":
        return [(start_attach(reaper, root), signal.SIGINT)]
    if arm == "agent":
        agent, agent_err, _url = start_agent(reaper, ["--comm", f"^{server.comm}$"])
        agent_err.wait_for(rf"tracing \S+ \(pid {root}\)", timeout=60)
        return [(agent, signal.SIGINT)]
    return []  # untraced, control


def period(server, arm: str, root: int, port: int, args: argparse.Namespace,
           reaper: Reaper) -> Measure:
    """One measured period of a running server under `arm`'s cowtrace (or none)."""
    started = start_tracer(server, arm, root, reaper)
    try:
        return loaded(server, root, port, args)
    finally:
        for proc, signum in started:
            reaper.stop(proc, signum, timeout=30)


def same_server(server, arms: list[str], args: argparse.Namespace, reaper: Reaper,
                ratios: dict, results: dict) -> None:
    """The same-server method (see the module's docstring) for `arms`."""
    port = free_port()
    env = {**os.environ, **server.env()}
    proc = reaper.start(server.command(port), env=env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        root = proc.pid
        server.ready(root, port)
        pin_family(root, SERVER_CPU)
        server.warm(port, 2 * args.warmup)
        for index in range(args.pairs):
            line = []
            for arm in arms:
                first, second = ("untraced", arm) if index % 2 == 0 else (arm, "untraced")
                this = {}
                for which in (first, second):  # the control's two periods are both untraced
                    tracer_arm = "untraced" if which == "control" else which
                    this[which] = period(server, tracer_arm, root, port, args, reaper)
                base, other = this["untraced"], this[arm]
                results.setdefault((server.name, "untraced"), []).append(base)
                results.setdefault((server.name, arm), []).append(other)
                ratios.setdefault((server.name, arm), []).append((
                    other.rps / base.rps, base.cpu_per_request_us / other.cpu_per_request_us,
                ))
                line.append(f"{arm} {other.rps / base.rps:.3f}"
                            f" ({base.rps:.0f} -> {other.rps:.0f} req/s)")
            print(f"{server.name} pair {index + 1}: " + ", ".join(line), flush=True)
    finally:
        reaper.stop(proc, signal.SIGTERM, timeout=30)


def fresh_servers(server, args: argparse.Namespace, reaper: Reaper, ratios: dict,
                  results: dict) -> None:
    """The fresh-server method (see the module's docstring) for `run`."""
    for index in range(args.rounds):
        order = ["untraced", "run"] if index % 2 == 0 else ["run", "untraced"]
        this = {arm: measure(server, arm, args, reaper) for arm in order}
        base, traced = this["untraced"], this["run"]
        results.setdefault((server.name, "untraced"), []).append(base)
        results.setdefault((server.name, "run"), []).append(traced)
        ratios.setdefault((server.name, "run"), []).append((
            traced.rps / base.rps, base.cpu_per_request_us / traced.cpu_per_request_us,
        ))
        print(f"{server.name} round {index + 1}: run {traced.rps / base.rps:.3f}"
              f" ({base.rps:.0f} -> {traced.rps:.0f} req/s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arms and method: see the module's docstring and bench/README.md.",
    )
    parser.add_argument("--pairs", type=int, default=7, help="same-server pairs per arm")
    parser.add_argument("--rounds", type=int, default=5, help="fresh-server rounds (run)")
    parser.add_argument("--server", default="gunicorn,redis", help="comma-separated")
    parser.add_argument("--arms", default=",".join(ALL_ARMS), help="comma-separated; "
                        "untraced is always measured (the reference)")
    parser.add_argument("--seconds", type=float, default=5.0, help="gunicorn: wrk -d")
    parser.add_argument("--warmup", type=float, default=2.0, help="gunicorn: seconds of load "
                        "before measuring (redis: one --redis-requests / 10 run)")
    parser.add_argument("--records", type=int, default=100000, help="gunicorn's table")
    parser.add_argument("--redis-requests", type=int, default=100000, help="per command")
    args = parser.parse_args()
    arms = ["untraced", *[a for a in args.arms.split(",") if a and a != "untraced"]]
    unknown = set(arms) - set(ALL_ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ALL_ARMS)}")
    classes = {"gunicorn": Gunicorn, "redis": Redis}
    names = [n for n in args.server.split(",") if n]
    if not names or set(names) - set(classes):
        parser.error(f"--server: choose from {', '.join(classes)}")
    if args.rounds < 1 or args.pairs < 1:
        parser.error("--rounds and --pairs must be at least 1")
    for tool in ("wrk" if "gunicorn" in names else "", "redis-server" if "redis" in names else
                 "", "redis-benchmark" if "redis" in names else ""):
        if tool and shutil.which(tool) is None:
            parser.error(f"{tool} is missing (apt-get install wrk redis-server)")
    print(machine_note(), flush=True)
    results: dict[tuple[str, str], list[Measure]] = {}
    ratios: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with Reaper() as reaper, tempfile.TemporaryDirectory() as tmp:
        for name in names:
            server = classes[name](args, Path(tmp))
            same = [a for a in arms if a in SAME_SERVER_ARMS]
            if same:
                same_server(server, same, args, reaper, ratios, results)
            if "run" in arms:
                fresh_servers(server, args, reaper, ratios, results)
    print()
    print(machine_note())
    print(f"medians (range): attach, agent, control over {args.pairs} same-server pairs;"
          f" run over {args.rounds} fresh-server rounds; ratios to the untraced period")
    print("| server | arm | req/s ratio | CPU/request ratio (untraced/arm) | target |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        base = results[(name, "untraced")]
        print(f"| {name} | untraced | {statistics.median(m.rps for m in base):.0f} req/s |"
              f" {statistics.median(m.cpu_per_request_us for m in base):.1f} us/request | |")
        for arm in arms[1:]:
            values = ratios[(name, arm)]
            rps = [v[0] for v in values]
            cpu = [v[1] for v in values]
            target = "within 1%" if arm == "control" else f">= {TARGETS[arm]}"
            print(f"| {name} | {arm} | {statistics.median(rps):.3f} ({min(rps):.3f}-"
                  f"{max(rps):.3f}) | {statistics.median(cpu):.3f} ({min(cpu):.3f}-"
                  f"{max(cpu):.3f}) | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
