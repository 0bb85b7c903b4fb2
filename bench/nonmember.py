"""What cowtrace charges a process it does not trace: a null-syscall loop and a CoW storm.

Issue 12's first promise: processes cowtrace does not trace pay nothing measurable.  Two
measurements, each A/B with the arms alternating in one run, ratios against nothing loaded:

1. Null syscalls (`bench/null_syscall.c`: `syscall(SYS_getppid)` in a loop, pinned to CPU 1),
   ns per call.  Arms, rotated from round to round:
     nothing    no cowtrace running;
     attach     `cowtrace PID` attached to an idle `sleep` (the loop is no member);
     agent      `cowtrace agent --pid PID` watching the same idle `sleep`;
     control    nothing again: what the method reads with no difference (should be 1.00).
   Each arm starts its cowtrace, waits until it is attached, runs the loop (median of
   `--batches` batches of `--calls` calls), then stops it.  A syscall tracepoint anywhere puts
   every task on the slow syscall path (1.4x here): this is the test of that.
2. CoW storm of a non-member (`bench/toggled.py`'s machinery: one storm child writes its
   buffer in chunks; between chunks cowtrace's hot programs, loaded through
   cowtrace.kernel.tracer with the CLI's default configuration, which the agent uses too, are
   attached or detached).  The child is no member, so this is the fault-path cost any other
   process pays while cowtrace runs: the membership check and the tracepoints being on at all.
   The CLI's user-space loop has nothing to drain for a non-member, so the kernel side is all
   of it.  A third arm in the same cycles, `empty` (bench/toggled.py), attaches programs that
   return at once on the same tracepoints: the floor any tracer hooked there costs, which
   moves with this VM from day to day (1.035x on 2026-12-01); the difference between the two
   is what cowtrace's own non-member code costs.

Targets (issue 12): syscall <= 1.02x, storm <= 1.04x.

Usage (root): .venv/bin/python bench/nonmember.py [--rounds 5] [--calls 1000000]
    [--batches 7] [--storm-rounds 5] [--pages 262144] [--no-storm] [--no-syscalls]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_arms import Reaper, idle_process, machine_note, start_agent, start_attach

HERE = Path(__file__).resolve().parent
LOOP_CPU = 1
SYSCALL_ARMS = ("nothing", "attach", "agent", "control")


def build_loop(outdir: Path) -> Path:
    binary = outdir / "null_syscall"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "null_syscall.c")], check=True
    )
    return binary


def loop_ns(binary: Path, calls: int, batches: int) -> float:
    """Median ns per call over the batches of one run of the loop."""
    out = subprocess.run(
        ["taskset", "-c", str(LOOP_CPU), str(binary), str(calls), str(batches)],
        capture_output=True, text=True, check=True,
    ).stdout
    return statistics.median(float(line) for line in out.split())


def measure_arm(arm: str, binary: Path, calls: int, batches: int, reaper: Reaper) -> float:
    if arm in ("nothing", "control"):
        return loop_ns(binary, calls, batches)
    with idle_process(reaper) as idle:
        if arm == "attach":
            tracer = start_attach(reaper, idle.pid)
        else:
            tracer, _err, _url = start_agent(reaper, ["--pid", str(idle.pid)])
        try:
            return loop_ns(binary, calls, batches)
        finally:
            reaper.stop(tracer)


def syscall_rounds(args: argparse.Namespace, reaper: Reaper, workdir: Path) -> dict:
    binary = build_loop(workdir)
    loop_ns(binary, args.calls, 1)  # warm the binary and the CPU
    ns: dict[str, list[float]] = {arm: [] for arm in SYSCALL_ARMS}
    ratios: dict[str, list[float]] = {arm: [] for arm in SYSCALL_ARMS if arm != "nothing"}
    for index in range(args.rounds):
        order = SYSCALL_ARMS[index % 4:] + SYSCALL_ARMS[: index % 4]
        this = {arm: measure_arm(arm, binary, args.calls, args.batches, reaper) for arm in order}
        for arm, value in this.items():
            ns[arm].append(value)
        for arm in ratios:
            ratios[arm].append(this[arm] / this["nothing"])
        print(f"syscall round {index + 1}: "
              + ", ".join(f"{arm} {this[arm]:.1f} ns" for arm in SYSCALL_ARMS), flush=True)
    return {"ns": ns, "ratios": ratios}


STORM_ARMS = ("non-member", "empty")


def storm_rounds(args: argparse.Namespace) -> dict[str, list[float]]:
    """Per arm (cowtrace's programs with the child no member; empty programs), each round's
    median chunk ratio against nothing attached."""
    from interleaved import build
    from toggled import Arm, run_round

    ratios: dict[str, list[float]] = {name: [] for name in STORM_ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        for index in range(args.storm_rounds):
            arms = [Arm.parse(f"{name}={name}") for name in STORM_ARMS]
            per_cycle = run_round(binary, args.pages, args.chunk, args.warm, arms)
            for name in STORM_ARMS:
                ratios[name].append(statistics.median(per_cycle[name]))
            print(f"storm round {index + 1}: "
                  + ", ".join(f"{name} {ratios[name][-1]:.3f}" for name in STORM_ARMS),
                  flush=True)
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arms and method: see the module's docstring and bench/README.md.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="syscall rounds (default 5)")
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls per batch")
    parser.add_argument("--batches", type=int, default=7, help="batches per arm and round")
    parser.add_argument("--storm-rounds", type=int, default=5)
    parser.add_argument("--pages", type=int, default=262144, help="storm pages (1 GiB)")
    parser.add_argument("--chunk", type=int, default=2048, help="storm pages per chunk")
    parser.add_argument("--warm", type=int, default=256,
                        help="storm pages at the start of each chunk left out of its time")
    parser.add_argument("--no-storm", action="store_true")
    parser.add_argument("--no-syscalls", action="store_true")
    args = parser.parse_args()
    if min(args.rounds, args.storm_rounds, args.batches, args.calls) < 1:
        parser.error("rounds, batches and calls must be at least 1")
    print(machine_note(), flush=True)
    syscalls = storm = None
    with Reaper() as reaper, tempfile.TemporaryDirectory() as tmp:
        if not args.no_syscalls:
            syscalls = syscall_rounds(args, reaper, Path(tmp))
        if not args.no_storm:
            # toggled.py's rule: the storm on its CPU, attach/detach on the other.
            os.sched_setaffinity(0, {c for c in os.sched_getaffinity(0) if c != 1})
            storm = storm_rounds(args)
    print()
    print(machine_note())
    print("| non-member, vs. nothing loaded | median | rounds | target |")
    print("| --- | --- | --- | --- |")
    if syscalls is not None:
        base = statistics.median(syscalls["ns"]["nothing"])
        print(f"| null syscall, nothing loaded | {base:.1f} ns/call | "
              f"{min(syscalls['ns']['nothing']):.1f}-{max(syscalls['ns']['nothing']):.1f} | |")
        for arm, label in (("control", "control (nothing again)"),
                           ("attach", "`cowtrace PID` on an idle process"),
                           ("agent", "`cowtrace agent --pid` on an idle process")):
            values = syscalls["ratios"][arm]
            target = "" if arm == "control" else "<= 1.02x"
            print(f"| null syscall, {label} | {statistics.median(values):.3f}x |"
                  f" {min(values):.3f}-{max(values):.3f} | {target} |")
    if storm is not None:
        for name, label, target in (
            ("non-member", "cowtrace's programs attached (non-member)", "<= 1.04x"),
            ("empty", "empty programs on the same tracepoints (the floor)", ""),
        ):
            values = storm[name]
            print(f"| CoW storm, {label} | {statistics.median(values):.3f}x |"
                  f" {min(values):.3f}-{max(values):.3f} | {target} |")
        extra = [a / b for a, b in zip(storm["non-member"], storm["empty"], strict=True)]
        print(f"| CoW storm, cowtrace over empty programs (same rounds) |"
              f" {statistics.median(extra):.3f}x | {min(extra):.3f}-{max(extra):.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
