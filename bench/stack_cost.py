"""In-kernel cost of the writer stack per copy: the run time of cowtrace's mm_page_alloc program
(kernel.bpf_stats_enabled) during a CoW storm, with and without --no-stacks, alternating.

The storm's wall time on this shared VM swings by 2x between runs; the program's own run time
does not, so this is the figure to quote for what a stack capture adds to each copy.  Both
variants run with --no-malloc (allocator uprobes are measured by malloc_bench.py).

Usage (root): .venv/bin/python bench/stack_cost.py [--runs 3] [--pages 131072]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def programs() -> list[dict]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    try:
        return json.loads(out.stdout or "[]")
    except ValueError:
        return []


def measure(binary: Path, pages: int, options: list[str]) -> tuple[float, float]:
    """(ns of mm_page_alloc program time per copy, child write ms) for one traced storm."""
    start = max((p["id"] for p in programs()), default=0)
    command = [sys.executable, "-m", "cowtrace", "run", "--quiet", *options, "--", str(binary)]
    process = subprocess.Popen([*command, str(pages)], stdout=subprocess.PIPE, text=True)
    seen: dict[int, int] = {}
    while process.poll() is None:
        for prog in programs():
            if prog["id"] > start and prog.get("name") == "mm_page_alloc":
                seen[prog["id"]] = max(seen.get(prog["id"], 0), prog.get("run_time_ns", 0))
        time.sleep(0.2)
    out = process.communicate()[0]
    ms = next(float(line.split()[0]) for line in out.splitlines() if line.endswith(" ms"))
    return max(seen.values(), default=0) / pages, ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pages", type=int, default=131072)
    args = parser.parse_args()
    previous = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    variants = {"stacks": ["--no-malloc"], "no-stacks": ["--no-malloc", "--no-stacks"]}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "storm"
            subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "storm.c")], check=True)
            for index in range(args.runs):
                for name, options in variants.items():
                    results[name].append(measure(binary, args.pages, options))
                print(
                    f"run {index + 1}: "
                    + ", ".join(
                        f"{n} {r[-1][0]:.0f} ns/copy in BPF, child {r[-1][1]:.0f} ms"
                        for n, r in results.items()
                    ),
                    flush=True,
                )
    finally:
        STATS_SYSCTL.write_text(previous)
    ns = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    ms = {name: statistics.median(r[1] for r in runs) for name, runs in results.items()}
    print(
        f"mm_page_alloc program time per copy: {ns['stacks']:.0f} ns with stacks, "
        f"{ns['no-stacks']:.0f} ns without: the stack capture adds "
        f"{ns['stacks'] - ns['no-stacks']:.0f} ns per copy"
    )
    print(f"child write time (noisy): {ms['stacks']:.0f} ms vs {ms['no-stacks']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
