"""CoW storm with cowtrace's hot hooks attached and detached between chunks of one child.

The other half of bench/interleaved.py.  That one runs the real CLI and compares a traced child
with a non-member next to it; but while cowtrace is loaded every process's faults and page
allocations enter its programs, the non-member's too.  Here one storm child writes its buffer
in chunks, and between chunks this script attaches or detaches the programs on the hot
tracepoints (page_fault_user, page_fault_kernel, mm_page_alloc, rss_stat) of cowtrace's own
BPF program, loaded through cowtrace.kernel.tracer with the default configuration (native and
Python writer stacks): chunks alternate traced and untraced, A B B A ..., in one child.

  member      the child is a member: traced vs. nothing attached at all, the bar's figure for
              the kernel side (bench/interleaved.py adds user space: the CLI's consumer);
  non-member  the child is not a member: what running next to cowtrace costs any process.

Nothing drains the fault ring here: 16 MiB holds ~350k records, more than a storm writes, so no
detail record is lost (checked).  Counts are only made during traced chunks.

Usage (root): .venv/bin/python bench/toggled.py [--rounds 5] [--pages 262144] [--chunk 2048]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from interleaved import Storm, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cowtrace.kernel.tracer import RAW_TRACEPOINTS, KernelTracer  # noqa: E402


class HotHooks:
    """Attach and detach the hot raw tracepoint programs of a loaded KernelTracer."""

    def __init__(self, tracer: KernelTracer) -> None:
        self.bpf = tracer.bpf
        self.attached = True

    def set(self, attached: bool) -> None:
        if attached == self.attached:
            return
        for name in RAW_TRACEPOINTS:
            if attached:
                self.bpf.attach_raw_tracepoint(
                    tp=name.encode(), fn_name=f"raw_tracepoint__{name}".encode()
                )
            else:
                self.bpf.detach_raw_tracepoint(tp=name.encode())
        self.attached = attached


def run_round(binary: Path, pages: int, chunk: int, member: bool) -> tuple[float, int, int]:
    """(median traced/untraced chunk ratio, copies counted, detail records lost)."""
    storm = Storm(binary, pages, chunk)
    tracer = KernelTracer()
    tracer.open()
    try:
        if member:
            tracer.add_member(storm.pid, storm.pid)
        hooks = HotHooks(tracer)
        storm.send("fork")
        traced, untraced = [], []
        for index in range((pages + chunk - 1) // chunk):
            for attached in ((True, False) if index % 2 == 0 else (False, True)):
                hooks.set(attached)
                (traced if attached else untraced).append(storm.chunk())
        hooks.set(False)
        storm.close()
        copies = sum(state.counts.copies for state in tracer.members().values())
        lost = tracer.stats()["lost_events"]
    finally:
        tracer.close()
    ratio = statistics.median(a / b for a, b in zip(traced, untraced, strict=True))
    return ratio, copies, lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pages", type=int, default=262144)
    parser.add_argument("--chunk", type=int, default=2048, help="pages per chunk (8 MiB)")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, int, int]]] = {"member": [], "non-member": []}
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        for index in range(args.rounds):
            line = []
            for mode in results:
                results[mode].append(run_round(binary, args.pages, args.chunk, mode == "member"))
                ratio, copies, lost = results[mode][-1]
                line.append(f"{mode} {ratio:.3f} ({copies} copies, {lost} lost)")
            print(f"round {index + 1}: " + ", ".join(line), flush=True)
    pairs = (args.pages + args.chunk - 1) // args.chunk
    print(f"== traced/untraced per chunk of {args.chunk} pages, {pairs} pairs a round,"
          f" {args.rounds} rounds")
    for mode, rows in results.items():
        ratios = [row[0] for row in rows]
        print(f"{mode:10} slowdown: median {statistics.median(ratios):.3f}x"
              f" (rounds {min(ratios):.3f}-{max(ratios):.3f}); lost {max(r[2] for r in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
