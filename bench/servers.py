"""Real servers under load: untraced vs `cowtrace PID` vs `cowtrace run` vs `cowtrace agent`.

Issue 12's second promise: the traced server keeps >= 98% of its throughput when attached to
or watched by the agent, >= 95% under `run` (defaults: allocation attribution on).

Servers (everything on 127.0.0.1):
  gunicorn   examples/gunicorn/app.py, --preload, 2 sync workers, a preloaded table of
             --records records; load: `wrk -t1 -c4 -d SECONDS` (twin method: bench/http_load.py,
             4 requests in flight, in slices of --slice seconds);
  redis      Debian's redis-server 7 (jemalloc), no persistence (no fork); load:
             `redis-benchmark -c 8 -d 200 -t set,get,lpush,lpop -n N` (twin method: a slice is
             one such run with N = --redis-requests / 10).
Arms:
  untraced   the server alone;
  attach     `cowtrace PID` attached to the running server (defaults);
  run        `cowtrace run -- SERVER` (defaults: allocator uprobes, writer stacks);
  agent      `cowtrace agent --comm '^COMM$'` watching the server (twin method: `--pid ROOT`
             of the traced twin, since the comm matches both twins; the agent's loop is the
             same for both options);
  control    untraced again: what the method reads when nothing differs.
The server's threads are pinned to CPU 0 once it is up, the load generator to CPU 1;
cowtrace is not pinned (its own work competes, as it would in production).

--method same (the default) takes two methods, because two servers started one after the
other differ by more than the 1-2% to be measured (untraced Redis ranged 73k-89k req/s from one
start to the next here):
  same server (attach, agent, control)  one server is started, pinned and warmed once; then
      --pairs times, for each arm, a period without cowtrace and a period with the arm's
      cowtrace attached to that same server (started, attached, warmed for --warmup
      seconds, measured, stopped), in the order A B, then B A, then A B... The figure is the
      median over pairs of the period ratio.  The control pairs two untraced periods.
  fresh servers (run)  `run` must start its server, so each round starts an untraced server
      and a server under `cowtrace run`, alternating which goes first (--rounds rounds).
Each measured period warms up first (--warmup seconds of load), then measures one load run.

--method twin, for a VM whose CPU itself changes from one few-second period to the next (here
gunicorn's CPU per request moved +-30% between 6-second periods with nothing traced, so the
same-server control read 0.88-1.14): two identical servers ("twins": the same command, the
same records, the same PYTHONHASHSEED, their own loopback ports), both pinned to the server
CPU, are loaded in turns in slices of --slice seconds, --slices slices per leg, in the order
T R R T R T T R... (T the traced twin, R the reference; the Thue-Morse sequence), so both see
the same moments of the VM's CPU and a smooth drift within 8 slices cancels. A leg's
figures are the traced twin's over the reference's, each summed over its slices: requests
per second, and CPU per request (the
twin family's schedstat time over its slices / its requests). Each round has two legs, twin A
traced then twin B traced (B first in odd rounds), and its figure is the geometric mean of the
two legs' ratios, so what differs between the twins themselves cancels; the figure is the
median over --rounds rounds.
  attach, agent, control  the twins are started, pinned and warmed once; in each leg the arm's
      cowtrace is started on the traced twin, both are warmed in turns (--warmup seconds of
      each), measured, and cowtrace is stopped. control traces neither twin.
  run   each leg starts both twins, the traced one under `cowtrace run`, warms and measures
      them, and stops them.
What the twin method leaves out: the reference twin runs while cowtrace is loaded, so it pays
what every untraced process pays (bench/nonmember.py measures that), and cowtrace's own CPU
(not pinned) falls on both twins' slices, so req/s counts only part of it (CPU per request
never counts cowtrace's own process, in either method).

Usage (root): .venv/bin/python bench/servers.py [--method same|twin] [--pairs 7] [--rounds 5]
    [--server gunicorn,redis] [--arms attach,run,agent,control] [--seconds 5] [--warmup 2]
    [--slice 0.25] [--slices 32] [--records 100000] [--redis-requests 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cli_arms import (
    Reaper,
    family_cpu_ns,
    machine_note,
    pin_family,
    process_cpu_ns,
    start_agent,
    start_attach,
    start_run,
)
from http_load import HttpLoad

from tests.e2e import EXAMPLES, family_of, free_port, wait_port

SERVER_CPU, LOAD_CPU = 0, 1
ALL_ARMS = ("untraced", "attach", "run", "agent", "control")
TARGETS = {"attach": 0.98, "agent": 0.98, "run": 0.95}


@dataclass
class Load:
    requests: int
    seconds: float


# One load slice of the twin method: (port, seconds) -> Load.
Slicer = Callable[[int, float], Load]


class Gunicorn:
    name = "gunicorn"
    comm = "gunicorn"
    workers = 2
    connections = 4  # requests in flight, wrk's and the twin method's load alike

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
            ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{self.connections}",
             f"-d{max(1, round(seconds))}s",
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

    @contextlib.contextmanager
    def slices(self, reaper: Reaper) -> Iterator[Slicer]:
        """The twin method's load: one HTTP load loop process for every slice."""
        loop = HttpLoad(reaper, LOAD_CPU, self.connections)
        try:
            yield lambda port, seconds: Load(*loop.load(port, seconds))
        finally:
            loop.close()


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

    @contextlib.contextmanager
    def slices(self, reaper: Reaper) -> Iterator[Slicer]:
        """The twin method's load: a slice is one redis-benchmark run of --redis-requests/10
        per command (it counts requests, not seconds)."""
        yield lambda port, _seconds: self.load(port, 0, requests=max(1000, self.requests // 10))


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


def start_tracer(server, arm: str, root: int, reaper: Reaper,
                 by_pid: bool = False) -> list[tuple[subprocess.Popen, int]]:
    """The arm's cowtrace on a running server, returned once it traces it.  The agent picks
    the server by its comm, or by its root's pid when another server shares the comm."""
    if arm == "attach":
        return [(start_attach(reaper, root), signal.SIGINT)]
    if arm == "agent":
        target = ["--pid", str(root)] if by_pid else ["--comm", f"^{server.comm}$"]
        agent, agent_err, _url = start_agent(reaper, target)
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


TWIN_KEPT_ARMS = ("attach", "agent", "control")  # on twins started once; run starts its own


@dataclass
class Twin:
    port: int
    root: int
    pids: list[int]  # its family, read once it is up (sync workers are not replaced here)

    def cpu_ns(self) -> int:
        return sum(process_cpu_ns(pid) for pid in self.pids)


def start_twins(server, reaper: Reaper, under_run: int | None,
                started: list[tuple[subprocess.Popen, int]]) -> list[Twin]:
    """Twins A and B, up, pinned to the server CPU; twin `under_run` (if any) is started
    under `cowtrace run`.  What is started goes to `started`, for the caller to stop."""
    # The same hash seed for both: their dicts and sets are then laid out alike.
    env = {**os.environ, **server.env(), "PYTHONHASHSEED": "0"}
    ports = [free_port()]
    while len(ports) < 2:
        port = free_port()
        if port not in ports:
            ports.append(port)
    roots = []
    for index, port in enumerate(ports):
        if index == under_run:
            tracer, root = start_run(reaper, server.command(port), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append((tracer, signal.SIGTERM))
        else:
            proc = reaper.start(server.command(port), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
            started.append((proc, signal.SIGTERM))
            root = proc.pid
        roots.append(root)
    twins = []
    for port, root in zip(ports, roots, strict=True):
        server.ready(root, port)
        pin_family(root, SERVER_CPU)
        twins.append(Twin(port, root, family_of(root)))
    return twins


def in_turns(twins: list[Twin], traced: int, load: Slicer, slice_s: float,
             slices: int) -> tuple[Measure, Measure]:
    """`slices` slices in the order T R R T R T T R ... (the Thue-Morse sequence: a drift
    that is linear, quadratic or cubic over 8 slices cancels, and either twin ends as often
    as it starts): (traced twin, reference twin), each its requests per second and CPU per
    request over its own slices."""
    totals = [[0, 0.0, 0], [0, 0.0, 0]]  # per twin: requests, seconds, CPU ns
    for index in range(slices):
        which = traced if bin(index).count("1") % 2 == 0 else 1 - traced
        twin = twins[which]
        cpu = twin.cpu_ns()
        done = load(twin.port, slice_s)
        totals[which][0] += done.requests
        totals[which][1] += done.seconds
        totals[which][2] += twin.cpu_ns() - cpu
    measures = [Measure(r / s, c / 1e3 / r) for r, s, c in totals]
    return measures[traced], measures[1 - traced]


def twin_leg(server, arm: str, twins: list[Twin], traced: int, load: Slicer,
             args: argparse.Namespace, reaper: Reaper) -> tuple[Measure, Measure]:
    """One leg on running twins: the arm's cowtrace on twin `traced` (none for control and
    run), both warmed in turns, then measured in turns."""
    started = start_tracer(server, "untraced" if arm == "control" else arm,
                           twins[traced].root, reaper, by_pid=True)
    try:
        warm_slices = 2 * max(1, round(args.warmup / args.slice))
        in_turns(twins, traced, load, args.slice, warm_slices)
        return in_turns(twins, traced, load, args.slice, args.slices)
    finally:
        for proc, signum in started:
            reaper.stop(proc, signum, timeout=30)


def run_leg(server, traced: int, load: Slicer, args: argparse.Namespace,
            reaper: Reaper) -> tuple[Measure, Measure]:
    """One leg of `run`: fresh twins, twin `traced` under `cowtrace run`."""
    started: list[tuple[subprocess.Popen, int]] = []
    try:
        twins = start_twins(server, reaper, traced, started)
        return twin_leg(server, "run", twins, traced, load, args, reaper)
    finally:
        for proc, signum in reversed(started):
            reaper.stop(proc, signum, timeout=30)


def twin_method(server, arms: list[str], args: argparse.Namespace, reaper: Reaper,
                ratios: dict, results: dict) -> None:
    """The twin method (see the module's docstring) for `arms`."""
    kept = [a for a in arms if a in TWIN_KEPT_ARMS]
    started: list[tuple[subprocess.Popen, int]] = []
    with server.slices(reaper) as load:
        try:
            twins = start_twins(server, reaper, None, started) if kept else []
            for twin in twins:
                load(twin.port, 2 * args.warmup)
            for index in range(args.rounds):
                line = []
                for arm in [*kept, *(["run"] if "run" in arms else [])]:
                    legs = []
                    for traced in ((0, 1) if index % 2 == 0 else (1, 0)):
                        if arm == "run":
                            legs.append(run_leg(server, traced, load, args, reaper))
                        else:
                            legs.append(twin_leg(server, arm, twins, traced, load, args,
                                                 reaper))
                    rps = [t.rps / r.rps for t, r in legs]
                    cpu = [r.cpu_per_request_us / t.cpu_per_request_us for t, r in legs]
                    for other, reference in legs:
                        results.setdefault((server.name, "untraced"), []).append(reference)
                        results.setdefault((server.name, arm), []).append(other)
                    ratios.setdefault((server.name, arm), []).append(
                        (math.sqrt(rps[0] * rps[1]), math.sqrt(cpu[0] * cpu[1])))
                    line.append(f"{arm} {math.sqrt(rps[0] * rps[1]):.3f} req/s"
                                f" {math.sqrt(cpu[0] * cpu[1]):.3f} CPU/request (legs"
                                f" {rps[0]:.3f} {rps[1]:.3f}; {cpu[0]:.3f} {cpu[1]:.3f})")
                print(f"{server.name} round {index + 1}: " + ", ".join(line), flush=True)
        finally:
            for proc, signum in reversed(started):
                reaper.stop(proc, signum, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arms and method: see the module's docstring and bench/README.md.",
    )
    parser.add_argument("--method", choices=("same", "twin"), default="same",
                        help="same: same-server pairs and fresh-server rounds; twin: two "
                        "servers loaded in turns")
    parser.add_argument("--pairs", type=int, default=7, help="same-server pairs per arm")
    parser.add_argument("--rounds", type=int, default=5, help="fresh-server rounds (run); "
                        "twin method: rounds of every arm (two legs each)")
    parser.add_argument("--server", default="gunicorn,redis", help="comma-separated")
    parser.add_argument("--arms", default=",".join(ALL_ARMS), help="comma-separated; "
                        "untraced is always measured (the reference)")
    parser.add_argument("--seconds", type=float, default=5.0, help="gunicorn: wrk -d")
    parser.add_argument("--warmup", type=float, default=2.0, help="gunicorn: seconds of load "
                        "before measuring (redis: one --redis-requests / 10 run)")
    parser.add_argument("--slice", type=float, default=0.25, help="twin method, gunicorn: "
                        "seconds of load per slice")
    parser.add_argument("--slices", type=int, default=32, help="twin method: measured slices "
                        "per leg (half on each twin)")
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
    if args.rounds < 1 or args.pairs < 1 or args.slices < 4 or args.slice <= 0:
        parser.error("--rounds and --pairs must be at least 1, --slices at least 4, --slice"
                     " above 0")
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
            if args.method == "twin":
                twin_method(server, arms[1:], args, reaper, ratios, results)
                continue
            same = [a for a in arms if a in SAME_SERVER_ARMS]
            if same:
                same_server(server, same, args, reaper, ratios, results)
            if "run" in arms:
                fresh_servers(server, args, reaper, ratios, results)
    print()
    print(machine_note())
    if args.method == "twin":
        print(f"medians (range) over {args.rounds} twin rounds ({args.slices} slices of"
              f" {args.slice} s per leg, two legs a round); ratios to the reference twin")
    else:
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
