"""cowtrace's own CPU while nothing copies: `cowtrace PID`, `cowtrace agent`, `cowtrace run`.

Issue 12's target: with nothing copying, cowtrace's own CPU <= 0.5% of a core (trace and
agent).  The traced family is idle: a shell and four `sleep`s (five members).  Each arm starts
its cowtrace on a fresh family, lets it settle (--settle seconds: bcc's compile and the
attach are start-up, reported by the summary's `attach_s`, not idle cost), then reads its
process's CPU time (every thread's schedstat run time, so no tick rounding) over --seconds.
The agent is scraped every --scrape seconds, as a Prometheus would.  Arms rotate from round
to round; the figure is the median over rounds.

The summary's own report of the same thing (`"tracer"` in `--json`: `tracing_cpu_percent`,
from its start to its end, settle time included) is printed beside it for `trace` and `run`.

Usage (root): .venv/bin/python bench/idle.py [--rounds 3] [--seconds 60] [--settle 5]
    [--scrape 15] [--arms trace,agent,run]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cli_arms import (
    Reaper,
    machine_note,
    process_cpu_ns,
    start_agent,
    start_attach,
    start_run,
)

FAMILY = ["/bin/sh", "-c", "sleep 100000 & sleep 100000 & sleep 100000 & sleep 100000 & wait"]
ALL_ARMS = ("trace", "agent", "run")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(arm: str, args: argparse.Namespace, reaper: Reaper, workdir: Path) -> dict:
    summary = workdir / f"{arm}.json"
    started = []
    try:
        url = None
        if arm == "run":
            tracer, _root = start_run(reaper, FAMILY, ["--json", str(summary)])
            stop = signal.SIGTERM  # passed on to the family's shell; run ends with it
            started.append(tracer)
        else:
            family = reaper.start(FAMILY)
            started.append(family)
            time.sleep(0.5)  # the shell forks its sleeps
            if arm == "trace":
                tracer = start_attach(reaper, family.pid, ["--json", str(summary)])
            else:
                tracer, _err, url = start_agent(reaper, ["--pid", str(family.pid)])
            stop = signal.SIGINT
            started.append(tracer)
        time.sleep(args.settle)
        cpu_before, wall_before = process_cpu_ns(tracer.pid), time.monotonic()
        next_scrape = wall_before
        while time.monotonic() < wall_before + args.seconds:
            if url and time.monotonic() >= next_scrape:
                urllib.request.urlopen(url, timeout=10).read()
                next_scrape += args.scrape
            time.sleep(min(1.0, max(0.0, wall_before + args.seconds - time.monotonic())))
        cpu = process_cpu_ns(tracer.pid) - cpu_before
        wall = time.monotonic() - wall_before
        result = {"percent": 100 * cpu / 1e9 / wall, "rss_mib": rss_mib(tracer.pid)}
        reaper.stop(tracer, stop, timeout=60)
        if summary.exists():
            result["summary_percent"] = json.loads(summary.read_text())["tracer"].get(
                "tracing_cpu_percent")
        return result
    finally:
        for proc in reversed(started):
            reaper.kill(proc)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Method: see the module's docstring and bench/README.md.",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured per arm")
    parser.add_argument("--settle", type=float, default=5.0, help="after attach, not measured")
    parser.add_argument("--scrape", type=float, default=15.0, help="agent scrape interval")
    parser.add_argument("--arms", default=",".join(ALL_ARMS), help="comma-separated")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if not arms or set(arms) - set(ALL_ARMS):
        parser.error(f"--arms: choose from {', '.join(ALL_ARMS)}")
    if args.rounds < 1 or args.seconds <= 0 or args.scrape <= 0:
        parser.error("--rounds, --seconds and --scrape must be positive")
    print(machine_note(), flush=True)
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    with Reaper() as reaper, tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            order = arms[index % len(arms):] + arms[: index % len(arms)]
            line = []
            for arm in order:
                result = measure(arm, args, reaper, Path(tmp))
                results[arm].append(result)
                line.append(f"{arm} {result['percent']:.3f}% ({result['rss_mib']:.0f} MiB)")
            print(f"round {index + 1}: " + ", ".join(line), flush=True)
    print()
    print(machine_note())
    print(f"cowtrace's own CPU with nothing copying, % of one core over {args.seconds:g} s;"
          f" medians of {args.rounds} rounds (range)")
    print("| arm | CPU | RSS | summary's tracing_cpu_percent | target |")
    print("| --- | --- | --- | --- | --- |")
    for arm in arms:
        values = [r["percent"] for r in results[arm]]
        rss = statistics.median(r["rss_mib"] for r in results[arm])
        reported = [r["summary_percent"] for r in results[arm] if r.get("summary_percent")
                    is not None]
        shown = f"{statistics.median(reported):.3f}%" if reported else ""
        target = "<= 0.5%" if arm in ("trace", "agent") else ""
        print(f"| {arm} | {statistics.median(values):.3f}% ({min(values):.3f}-"
              f"{max(values):.3f}) | {rss:.0f} MiB | {shown} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
