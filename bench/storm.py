"""CoW storm benchmark: a child writes one byte into each of 262144 shared pages (1 GiB).

Runs alternate in one go (this machine is noisy): the storm untraced, then the storm with
`cowtrace PID` attached to its parent before it forks (the way users run it), and so on.
It reports:
  - the child's slowdown, traced vs. untraced, as the median ratio of its CPU time (user +
    system: what tracing adds to the writer, since BPF programs run in its context; unlike wall
    time it does not grow when other work takes the CPU) and of its wall time (bar: 1.25x);
  - detail events lost (bar: 0) and the child's copies (exact: the pages plus the C runtime's);
  - cowtrace's own CPU time per million events, counted from attached to exit (so the one-off
    compile is apart), its peak RSS, and its time from start to attached (compile included).

Usage (root): .venv/bin/python bench/storm.py [--runs 7] [--pages 262144] [-- extra cowtrace
options, e.g. --no-stacks], or with several traced variants in the same rotation:
  bench/storm.py --variant default="" --variant nostacks="--no-stacks"
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tracing import AttachedTracer

HERE = Path(__file__).resolve().parent


@dataclass
class ChildTimes:
    wall_ms: float
    cpu_ms: float


def build(outdir: Path) -> Path:
    binary = outdir / "storm"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "storm.c")], check=True)
    return binary


def parse_child(line: str) -> ChildTimes:
    """`<wall> ms wall, <cpu> ms cpu`, as storm.c prints it."""
    fields = line.replace(",", "").split()
    return ChildTimes(wall_ms=float(fields[0]), cpu_ms=float(fields[3]))


def run_untraced(binary: Path, pages: int) -> ChildTimes:
    out = subprocess.run([str(binary), str(pages)], capture_output=True, text=True, check=True)
    return parse_child(out.stdout.strip().splitlines()[-1])


def run_traced(binary: Path, pages: int, workdir: Path, extra: list[str]) -> dict:
    """The storm's parent waits on stdin; cowtrace attaches; then the parent forks."""
    storm = subprocess.Popen(
        [str(binary), str(pages), "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = storm.stdout.readline().split()
    assert ready[:1] == ["ready"], ready
    tracer = AttachedTracer(int(ready[1]), extra, workdir / "summary.json")
    storm.stdin.write("go\n")
    storm.stdin.flush()
    child = parse_child(storm.stdout.readline())
    steady_rss = tracer.rss_now()  # after the storm, before the root exits
    assert storm.wait(timeout=120) == 0
    result = tracer.finish()
    return {
        "child": child,
        "lost": result.lost,
        "child_copies": result.top_copies,
        "events": result.events,
        "cpu_after_attach_s": result.cpu_after_attach_s,
        "peak_rss_mib": result.peak_rss_mib,
        "rss_after_storm_mib": steady_rss,
        "attach_s": result.attach_s,
    }


def _summarize(name: str, runs: list[dict], untraced: list[ChildTimes], pages: int) -> None:
    cpu_ratio = statistics.median(
        t["child"].cpu_ms / u.cpu_ms for t, u in zip(runs, untraced, strict=True)
    )
    wall_ratio = statistics.median(
        t["child"].wall_ms / u.wall_ms for t, u in zip(runs, untraced, strict=True)
    )
    print(f"== {name}")
    print(
        f"child slowdown, median of {len(runs)} alternating pairs: cpu {cpu_ratio:.3f}x,"
        f" wall {wall_ratio:.3f}x (bar 1.25); traced child median"
        f" {statistics.median(t['child'].cpu_ms for t in runs):.0f} ms cpu"
    )
    print(
        f"lost detail events: max {max(r['lost'] for r in runs)} (bar 0); child copies"
        f" min {min(r['child_copies'] for r in runs)}, max"
        f" {max(r['child_copies'] for r in runs)} for {pages} pages"
    )
    per_million = statistics.median(r["cpu_after_attach_s"] / r["events"] * 1e6 for r in runs)
    print(
        f"cowtrace CPU after attach: {per_million:.2f} s per million events;"
        f" RSS after the storm: {max(r['rss_after_storm_mib'][0] for r in runs):.0f} MiB"
        f" anonymous + {max(r['rss_after_storm_mib'][1] for r in runs):.0f} MiB file-backed"
        f" (peak {max(r['peak_rss_mib'] for r in runs):.0f} MiB, bcc's in-process compile);"
        f" start to attached: median {statistics.median(r['attach_s'] for r in runs):.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--pages", type=int, default=262144)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='NAME="OPTIONS"',
        help="a traced variant with its own cowtrace options (repeatable; default: one"
        " variant with the options after --)",
    )
    parser.add_argument("extra", nargs="*", help="extra cowtrace options (after --)")
    args = parser.parse_args()
    variants = [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    variants = variants or [("traced " + " ".join(args.extra), args.extra)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        binary = build(workdir)
        for _, extra in variants:  # warm the calibration and page caches
            run_traced(binary, 1024, workdir, extra)
        untraced: list[ChildTimes] = []
        traced: dict[str, list[dict]] = {name: [] for name, _ in variants}
        for index in range(args.runs):
            untraced.append(run_untraced(binary, args.pages))
            line = [f"run {index + 1}: untraced {untraced[-1].cpu_ms:.0f} ms cpu"]
            for name, extra in variants:
                traced[name].append(run_traced(binary, args.pages, workdir, extra))
                result = traced[name][-1]
                line.append(f"{name} {result['child'].cpu_ms:.0f} ms cpu (lost {result['lost']})")
                time.sleep(0.2)
            print(", ".join(line), flush=True)
    print(f"untraced child: median {statistics.median(u.cpu_ms for u in untraced):.0f} ms cpu")
    for name, runs in traced.items():
        _summarize(name, runs, untraced, args.pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
