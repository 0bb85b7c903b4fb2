"""CoW storm benchmark: a child writes one byte into each of 262144 shared pages (1 GiB).

Measures, in one run with traced and untraced runs alternating (this machine is noisy):
  - the child's write time untraced vs. under `cowtrace run` (median ratio; bar: 1.25x),
  - detail events lost (bar: 0) and the child's copies (must be >= the page count),
  - cowtrace's own CPU time per million events and its peak RSS (from wait4),
  - cowtrace's time from start to attached (compile included, from the --json summary).

Usage (root): .venv/bin/python bench/storm.py [--runs 7] [--pages 262144]
  [--variant NAME="--no-stacks --no-malloc" ...]: more traced variants, each run in the same
  rotation with its own cowtrace options; their medians are compared with each other too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(outdir: Path) -> Path:
    binary = outdir / "storm"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "storm.c")], check=True)
    return binary


def child_ms(output: str) -> float:
    """The storm prints the child's write time in ms on the one line that ends with 'ms'."""
    return next(float(line.split()[0]) for line in output.splitlines() if line.endswith(" ms"))


def run_untraced(binary: Path, pages: int) -> float:
    out = subprocess.run([str(binary), str(pages)], capture_output=True, text=True, check=True)
    return child_ms(out.stdout)


def run_traced(binary: Path, pages: int, workdir: Path, extra: list[str] | None = None) -> dict:
    summary_path = workdir / "summary.json"
    command = [
        sys.executable,
        "-m",
        "cowtrace",
        "run",
        "--quiet",
        "--json",
        str(summary_path),
        *(extra or []),
        "--",
        str(binary),
        str(pages),
    ]
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.returncode == 0, process.stderr.read()
        out.seek(0)
        ms = child_ms(out.read())
    summary = json.loads(summary_path.read_text())
    totals = summary["totals"]
    events = totals["copies"] + totals["reuses"] + totals["zero_fills"]
    child = max(summary["processes"], key=lambda p: p["copies"])
    return {
        "ms": ms,
        "lost": totals["lost_events"],
        "child_copies": child["copies"],
        "events": events,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "attach_s": summary["tracer"]["attach_s"],
        "stack_errors": summary["tracer"].get("stack_errors", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--pages", type=int, default=262144)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='NAME="OPTIONS"',
        help='another traced variant, e.g. nostacks="--no-stacks"',
    )
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        binary = build(workdir)
        run_traced(binary, 1024, workdir)  # warm the calibration cache and page cache
        untraced, traced = [], []
        others: dict[str, list[dict]] = {name: [] for name in variants}
        for index in range(args.runs):
            untraced.append(run_untraced(binary, args.pages))
            traced.append(run_traced(binary, args.pages, workdir))
            line = (
                f"run {index + 1}: untraced {untraced[-1]:.0f} ms, traced {traced[-1]['ms']:.0f}"
                f" ms, lost {traced[-1]['lost']}, stack errors {traced[-1]['stack_errors']}"
            )
            for name, options in variants.items():
                others[name].append(run_traced(binary, args.pages, workdir, shlex.split(options)))
                line += f", {name} {others[name][-1]['ms']:.0f} ms"
            print(line, flush=True)
    u = statistics.median(untraced)
    t = statistics.median(r["ms"] for r in traced)
    for name, runs in others.items():
        v = statistics.median(r["ms"] for r in runs)
        print(
            f"variant {name} ({variants[name]}): median {v:.0f} ms, ratio to untraced"
            f" {v / u:.3f}, traced/{name} {t / v:.3f}"
        )
    cpu_per_million = statistics.median(r["cpu_s"] / r["events"] * 1e6 for r in traced)
    print(
        f"child write time, median of {args.runs}: untraced {u:.0f} ms, traced {t:.0f} ms,"
        f" ratio {t / u:.3f} (bar 1.25)"
    )
    print(
        f"lost detail events: max {max(r['lost'] for r in traced)} (bar 0); child copies"
        f" min {min(r['child_copies'] for r in traced)} for {args.pages} pages"
    )
    print(
        f"cowtrace CPU: {cpu_per_million:.2f} s per million events (whole process: compile,"
        f" attach, drain, summary)"
    )
    print(
        f"cowtrace peak RSS: {max(r['peak_rss_mib'] for r in traced):.0f} MiB;"
        f" start to attached: median {statistics.median(r['attach_s'] for r in traced):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
