"""CoW storm with cowtrace's hot hooks attached and detached between chunks of one child.

The other half of bench/interleaved.py.  That one runs the real CLI and compares a traced child
with a non-member next to it; but while cowtrace is loaded every process's faults and page
allocations enter its programs, the non-member's too.  Here one storm child writes its buffer
in chunks, and between chunks this script attaches the hot tracepoint programs
(page_fault_user, page_fault_kernel, mm_page_alloc, rss_stat) of one of several loaded copies
of cowtrace's BPF program (cowtrace.kernel.tracer), or none: each "arm" is one such copy.  A
cycle writes one chunk untraced and one under each arm, in an order that rotates from cycle to
cycle, so every arm meets the same machine as the untraced chunks of its cycle.

Arms (`--arm NAME=SPEC`, SPEC a comma-separated list, empty for the defaults):
  member (default) / non-member   the child is a member of that copy, or not: non-member is
                                  what running next to cowtrace costs any other process;
  no-stacks, no-python-stacks     the CLI options of the same names;
  empty                           not cowtrace: a program whose hooks on the same tracepoints
                                  return at once.  What any tracer on these tracepoints costs
                                  a process (the tracepoints being on, the program's entry and
                                  exit), measured in the same cycles as the other arms, so
                                  that an arm's figure can be read against this floor.
The default arms: default (member, native and Python stacks, as `cowtrace PID`), core
(--no-stacks --no-python-stacks) and non-member.

Slowdown of an arm: the median over cycles of its chunk's CPU time over the untraced chunk's.
On this VM a single chunk's ratio swings by +-20-40% (every attach or detach patches kernel
text on all CPUs and leaves RCU work behind it), against +-1% per round for the two children
of bench/interleaved.py; so a round's median is good to about +-0.05 here, and the figure to
quote is the median of many rounds, with their range.
Nothing drains the fault rings: 16 MiB holds ~350k records, more than a storm writes (checked:
lost 0).  Counts are made only while an arm's hooks are attached.

Usage (root): .venv/bin/python bench/toggled.py [--rounds 3] [--pages 262144] [--chunk 2048]
    [--arm NAME=SPEC]...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from interleaved import STORM_CPU, Storm, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cowtrace.kernel.tracer import RAW_TRACEPOINTS, KernelTracer, TracerConfig  # noqa: E402

DEFAULT_ARMS = ("default=", "core=no-stacks,no-python-stacks", "non-member=non-member")


class EmptyPrograms:
    """A BPF object with an empty program on each of cowtrace's raw tracepoints (the `empty`
    arm): the tracer-shaped handle Arm needs (open, bpf, add_member, stats, close)."""

    def __init__(self) -> None:
        self.bpf = None

    def open(self) -> None:
        from bcc import BPF

        text = "".join(
            f"RAW_TRACEPOINT_PROBE({name}) {{ return 0; }}\n" for name in RAW_TRACEPOINTS
        )
        self.bpf = BPF(text=text)

    def add_member(self, pid: int, root: int) -> None:
        """Nothing to trace: the empty programs have no members."""

    def stats(self) -> dict[str, int]:
        return {"lost_events": 0}

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


@dataclass
class Arm:
    name: str
    config: TracerConfig
    member: bool
    empty: bool = False
    tracer: KernelTracer | EmptyPrograms | None = None

    @classmethod
    def parse(cls, text: str) -> Arm:
        name, _, spec = text.partition("=")
        words = {word for word in spec.split(",") if word}
        unknown = words - {"member", "non-member", "no-stacks", "no-python-stacks", "empty"}
        if unknown:
            raise SystemExit(f"toggled.py: unknown arm words {sorted(unknown)}")
        config = TracerConfig(
            stacks="no-stacks" not in words, python_stacks="no-python-stacks" not in words
        )
        empty = "empty" in words
        return cls(name, config, member="non-member" not in words and not empty, empty=empty)

    def attach(self, attached: bool) -> None:
        bpf = self.tracer.bpf
        for name in RAW_TRACEPOINTS:
            if attached:
                bpf.attach_raw_tracepoint(
                    tp=name.encode(), fn_name=f"raw_tracepoint__{name}".encode()
                )
            else:
                bpf.detach_raw_tracepoint(tp=name.encode())


def run_round(
    binary: Path, pages: int, chunk: int, warm: int, arms: list[Arm]
) -> dict[str, list[float]]:
    """Per arm, the ratio of its chunk over the untraced chunk of each cycle."""
    storm = Storm(binary, pages, chunk, warm)
    try:
        for arm in arms:  # each copy attaches on load; only one at a time from here on
            arm.tracer = EmptyPrograms() if arm.empty else KernelTracer(arm.config)
            arm.tracer.open()
            arm.attach(False)
            if arm.member:
                arm.tracer.add_member(storm.pid, storm.pid)
        slots: list[Arm | None] = [None, *arms]
        ratios: dict[str, list[float]] = {arm.name: [] for arm in arms}
        active: Arm | None = None
        storm.send("fork")
        for cycle in range((pages // chunk) // len(slots)):
            order = slots[cycle % len(slots):] + slots[: cycle % len(slots)]
            if cycle % 2:
                order.reverse()
            times: dict[str | None, float] = {}
            for arm in order:
                if arm is not active:
                    if active is not None:
                        active.attach(False)
                    if arm is not None:
                        arm.attach(True)
                    active = arm
                times[arm.name if arm else None] = storm.chunk()
            for arm in arms:
                ratios[arm.name].append(times[arm.name] / times[None])
        if active is not None:
            active.attach(False)
        storm.close()
        for arm in arms:
            lost = arm.tracer.stats()["lost_events"]
            assert lost == 0, f"{arm.name}: {lost} detail records lost"
    finally:
        for arm in arms:
            if arm.tracer is not None:
                arm.tracer.close()
                arm.tracer = None
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=262144)
    parser.add_argument("--chunk", type=int, default=2048, help="pages per chunk (8 MiB)")
    parser.add_argument(
        "--warm", type=int, default=256,
        help="pages at the start of each chunk left out of its time (caches are cold after"
        " the tracepoints change)",
    )
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=SPEC")
    args = parser.parse_args()
    arms = [Arm.parse(text) for text in (args.arm or DEFAULT_ARMS)]
    # The storm runs on STORM_CPU; attaching and detaching (text patching, RCU callbacks) stays
    # on the other CPU, with this driver.
    os.sched_setaffinity(0, {cpu for cpu in os.sched_getaffinity(0) if cpu != STORM_CPU})
    per_round: dict[str, list[float]] = {arm.name: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        for index in range(args.rounds):
            ratios = run_round(binary, args.pages, args.chunk, args.warm, arms)
            for name, values in ratios.items():
                per_round[name].append(statistics.median(values))
            print(f"round {index + 1}: "
                  + ", ".join(f"{name} {values[-1]:.3f}" for name, values in per_round.items()),
                  flush=True)
    cycles = (args.pages // args.chunk) // (len(arms) + 1)
    print(f"== traced/untraced in one child, chunks of {args.chunk} pages, {cycles} cycles a"
          f" round, {args.rounds} rounds, lost 0")
    for name, values in per_round.items():
        print(f"{name:12} slowdown: median {statistics.median(values):.3f}x"
              f" (rounds {min(values):.3f}-{max(values):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
