"""CoW storm, traced and untraced child interleaved chunk by chunk: the slowdown that tracing adds.

Why not whole runs.  On this VM a storm's cost depends on whether the guest pages it is handed
are still backed by the host: freed pages are reported back to the host almost at once (the
balloon's free page reporting), and the next run that gets them pays a host fault on first
touch, inside its own CPU time.  Identical untraced runs vary 2-3x, more than tracing costs.

So two storms run side by side, pinned to the same CPU: A (traced with `cowtrace PID`, attached
to its parent before the fork, as users run it) and B (not a member). Their children write
their 1 GiB buffers in chunks, alternating A B B A A B ..., and each chunk's CPU time
(CLOCK_THREAD_CPUTIME_ID) is read by the child itself.  Both draw fresh pages from the same
pool at the same moments, so the host's noise falls on both; the per-chunk ratio A/B is the
slowdown.  A control round with no tracer at all (A and B both untraced) shows what the method
itself reads: it should be 1.00.

B is not a member, but while cowtrace is loaded its faults and page allocations still enter
cowtrace's programs, which find it is not a member and return.  That cost (what every other
process on a traced host pays) is in B's times too, so A/B is the cost of being traced over
the cost of running next to the tracer.  `--bpf-stats` measures the second one: it turns on
kernel.bpf_stats_enabled and reports each program's mean run time per call in a round where
cowtrace traces an idle process and only non-members fault, and in one where it traces the
storm (what a member pays inside the programs, tail-called stack walks included).

Usage (root): .venv/bin/python bench/interleaved.py [--rounds 5] [--pages 262144]
    [--chunk 2048] [--variant NAME="cowtrace options"]... [--bpf-stats]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tracing import AttachedTracer, TraceResult

HERE = Path(__file__).resolve().parent
STORM_CPU = 1  # both storms run here; cowtrace and this driver are left the other core


def build(outdir: Path) -> Path:
    binary = outdir / "storm_chunks"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "storm_chunks.c")], check=True
    )
    return binary


class Storm:
    """One storm_chunks parent (then its child), driven line by line."""

    def __init__(self, binary: Path, pages: int, chunk: int, warm: int = 0) -> None:
        self.process = subprocess.Popen(
            ["taskset", "-c", str(STORM_CPU), str(binary), str(pages), str(chunk), str(warm)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.process.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        self.pid = int(ready[1])

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def chunk(self) -> float:
        """Write the next chunk; its CPU time in ms."""
        self.send("w")
        cpu_ns, _wall_ns = self.process.stdout.readline().split()
        return int(cpu_ns) / 1e6

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.send("q")
            self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0


@dataclass
class Round:
    traced_ms: list[float] = field(default_factory=list)
    untraced_ms: list[float] = field(default_factory=list)
    trace: TraceResult | None = None

    @property
    def chunk_ratio(self) -> float:
        """Median over chunk pairs of A's time over B's."""
        return statistics.median(
            a / b for a, b in zip(self.traced_ms, self.untraced_ms, strict=True)
        )

    @property
    def total_ratio(self) -> float:
        return sum(self.traced_ms) / sum(self.untraced_ms)


def run_round(binary: Path, pages: int, chunk: int, options: list[str] | None,
              workdir: Path) -> Round:
    """One A/B storm; `options` None: no tracer at all (the control)."""
    traced, untraced = Storm(binary, pages, chunk), Storm(binary, pages, chunk)
    tracer = None
    if options is not None:
        tracer = AttachedTracer(traced.pid, options, workdir / "summary.json")
    result = Round()
    try:
        traced.send("fork")
        untraced.send("fork")
        for index in range((pages + chunk - 1) // chunk):
            order = (traced, untraced) if index % 2 == 0 else (untraced, traced)
            for storm in order:
                (result.traced_ms if storm is traced else result.untraced_ms).append(
                    storm.chunk()
                )
    finally:
        traced.close()
        untraced.close()
    if tracer is not None:
        result.trace = tracer.finish()
    return result


def program_stats() -> dict[int, tuple[str, int, int]]:
    """id -> (name, run_cnt, run_time_ns) of every loaded BPF program that has stats (by id:
    another cowtrace on the machine has programs of the same names)."""
    shown = json.loads(subprocess.run(
        ["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True
    ).stdout)
    return {p["id"]: (p["name"], p["run_cnt"], p["run_time_ns"]) for p in shown if "run_cnt" in p}


def program_costs(binary: Path, pages: int, chunk: int, options: list[str],
                  workdir: Path, *, member: bool) -> dict[str, float]:
    """Mean ns per call of cowtrace's hot programs during one storm (bpf_stats): the storm
    traced (`member`), or cowtrace tracing an idle process while only a non-member faults."""
    previous = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
    idle = subprocess.Popen(["sleep", "600"])
    try:
        storm = Storm(binary, pages, chunk)
        traced = storm.pid if member else idle.pid
        tracer = AttachedTracer(traced, options, workdir / "costs.json")
        before = program_stats()
        storm.send("fork")
        for _ in range((pages + chunk - 1) // chunk):
            storm.chunk()
        storm.close()
        after = program_stats()
        idle.terminate()
        tracer.finish()
    finally:
        idle.kill()
        idle.wait()
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(previous)
    costs: dict[str, float] = {}
    runs: dict[str, int] = {}
    for prog_id, (name, count, ns) in after.items():
        _name, old_count, old_ns = before.get(prog_id, (name, 0, 0))
        calls = count - old_count
        # the storm's fault and allocation programs (the busiest of a name: this tracer's)
        if calls > pages // 2 and calls > runs.get(name, 0):
            runs[name] = calls
            costs[name] = (ns - old_ns) / calls
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pages", type=int, default=262144)
    parser.add_argument("--chunk", type=int, default=2048, help="pages per chunk (8 MiB)")
    parser.add_argument(
        "--variant", action="append", default=[], metavar='NAME="OPTIONS"',
        help='a traced variant with its own cowtrace options (repeatable; default: default="")',
    )
    parser.add_argument("--bpf-stats", action="store_true",
                        help="also measure what a non-member pays per fault (bpf_stats)")
    args = parser.parse_args()
    variants = [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    variants = variants or [("default", [])]
    rotation: list[tuple[str, list[str] | None]] = [("control", None), *variants]
    rounds: dict[str, list[Round]] = {name: [] for name, _ in rotation}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        binary = build(workdir)
        for _, options in variants:  # warm the calibration cache and the page cache
            run_round(binary, 4 * args.chunk, args.chunk, options, workdir)
        for index in range(args.rounds):
            line = []
            for name, options in rotation:
                result = run_round(binary, args.pages, args.chunk, options, workdir)
                rounds[name].append(result)
                line.append(f"{name} {result.chunk_ratio:.3f} (total {result.total_ratio:.3f},"
                            f" B {sum(result.untraced_ms):.0f} ms)")
            print(f"round {index + 1}: " + ", ".join(line), flush=True)
        costs: dict[str, dict[str, float]] = {}
        if args.bpf_stats:
            for role in ("non-member", "member"):
                costs[role] = program_costs(binary, args.pages, args.chunk, variants[0][1],
                                            workdir, member=role == "member")
    pairs = (args.pages + args.chunk - 1) // args.chunk
    print(f"== A/B per chunk of {args.chunk} pages, {pairs} pairs a round, {args.rounds} rounds")
    for name, results in rounds.items():
        if not results:  # --rounds 0: the non-member cost alone
            continue
        chunk_ratios = [r.chunk_ratio for r in results]
        totals = [r.total_ratio for r in results]
        line = (f"{name:12} slowdown: median {statistics.median(chunk_ratios):.3f}x"
                f" (rounds {min(chunk_ratios):.3f}-{max(chunk_ratios):.3f});"
                f" total-time ratio median {statistics.median(totals):.3f}x")
        traces = [r.trace for r in results if r.trace is not None]
        if traces:
            line += (f"; lost {max(t.lost for t in traces)};"
                     f" child copies {min(t.top_copies for t in traces)}"
                     f"-{max(t.top_copies for t in traces)} for {args.pages} pages")
        print(line)
    for role, programs in costs.items():
        for name, ns in programs.items():
            print(f"{role} cost ({variants[0][0]}): {name} {ns:.0f} ns per call"
                  " (bpf_stats, its own clock reads included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
