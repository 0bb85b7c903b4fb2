"""Cost of the allocator uprobes per call: a malloc(64)/free loop untraced, under
`cowtrace run --no-malloc` and under `cowtrace run --malloc`, alternating in one run (this
machine is noisy: medians and ratios).  One pair is three probe hits: malloc's entry and return,
free's entry.

Usage (root): .venv/bin/python bench/malloc_bench.py [--runs 5] [--pairs 200000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(outdir: Path) -> Path:
    binary = outdir / "malloc"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "malloc.c")], check=True)
    return binary


def ns_per_pair(output: str) -> float:
    return next(float(line.split()[0]) for line in output.splitlines() if "per pair" in line)


def run(binary: Path, pairs: int, cowtrace: list[str] | None) -> float:
    command = [str(binary), str(pairs)]
    if cowtrace is not None:
        command = [sys.executable, "-m", "cowtrace", "run", "--quiet", *cowtrace, "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return ns_per_pair(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=200000)
    args = parser.parse_args()
    variants = {"untraced": None, "no-malloc": ["--no-malloc"], "malloc": ["--malloc"]}
    results: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        run(binary, 1000, ["--malloc"])  # warm the calibration cache
        for index in range(args.runs):
            for name, options in variants.items():
                results[name].append(run(binary, args.pairs, options))
            print(
                f"run {index + 1}: " + ", ".join(f"{n} {r[-1]:.0f} ns" for n, r in results.items()),
                flush=True,
            )
    medians = {name: statistics.median(r) for name, r in results.items()}
    base = medians["untraced"]
    for name, value in medians.items():
        print(f"{name}: median {value:.1f} ns per malloc+free pair, ratio {value / base:.1f}")
    extra = medians["malloc"] - medians["no-malloc"]
    print(f"uprobe cost: {extra:.0f} ns per pair = {extra / 3:.0f} ns per probe hit (3 per pair)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
