"""Cost of naming Python writer stacks per drain (issue 14), in user space: the drain's part
of python/tracker.py (records grouped by stack, each stack's code objects checked against what
its process holds now, names from the caches) on stacks already named once: the steady state
of a long-running server, where almost every copy comes with a stack seen before.

A real CPython (3.12 by default) defines FUNCTIONS functions and forks --pids - 1 children,
all waiting; each drain is --records copies spread over --stacks stacks of --depth frames
made of those functions' code objects, over the processes.  Prints the median per drain and
per record of CPU time (this process: one core).

Usage (root): .venv/bin/python bench/python_names.py [--drains 200] [--pids 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cowtrace.kernel.abi import EVENT_DTYPE, KIND_COPY  # noqa: E402
from cowtrace.python import kernel  # noqa: E402
from cowtrace.python.detect import detect  # noqa: E402
from cowtrace.python.tracker import PythonStacks  # noqa: E402

DEFAULT_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python3.12"
FUNCTIONS = 200
TARGET = f"""
import os, sys
fns = []
for i in range({FUNCTIONS}):
    ns = {{}}
    exec(f"def f{{i}}(x):\\n    return x + {{i}}\\n", ns)
    fns.append(ns[f"f{{i}}"])
children = [os.fork() for _ in range(int(sys.argv[1]))]
if 0 in children:
    sys.stdin.read()
    os._exit(0)
print(" ".join(str(id(f.__code__)) for f in fns), flush=True)
print(" ".join(str(c) for c in children), flush=True)
sys.stdin.read()
"""
LEAF = 0x1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=DEFAULT_PYTHON)
    parser.add_argument("--pids", type=int, default=8)
    parser.add_argument("--stacks", type=int, default=64)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--drains", type=int, default=200)
    args = parser.parse_args()
    proc = subprocess.Popen(
        [args.python, "-c", TARGET, str(args.pids - 1)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        codes = [int(word) for word in proc.stdout.readline().split()]
        pids = [proc.pid] + [int(word) for word in proc.stdout.readline().split()]
        image = detect(proc.pid).image
        assert image is not None, "not detected as CPython"
        image.leaf_names[LEAF] = ("_PyEval_EvalFrameDefault", "libpython")
        python = PythonStacks()
        python._bpf = object()  # bound; the stacks are found in _raw
        for pid in pids:
            python.images[pid] = image
        rng = np.random.default_rng(14)
        for stack_id in range(args.stacks):
            chosen = rng.choice(codes, args.depth).tolist()
            python._raw[stack_id] = kernel.RawStack(LEAF, 0, tuple(chosen), (None,) * args.depth)
        records = np.zeros(args.records, EVENT_DTYPE)
        records["kind"] = KIND_COPY
        records["pid"] = rng.choice(pids, args.records)
        records["pystack_id"] = rng.integers(0, args.stacks, args.records)
        found = python.on_fault_events(records)  # named once: the caches are warm
        assert all(len(stack.frames) == args.depth for stack in found.stacks)
        times = []
        for _ in range(args.drains):
            started = time.process_time()
            python.on_fault_events(records)
            times.append(time.process_time() - started)
        per_drain = statistics.median(times)
        print(
            f"{args.records} records, {args.stacks} stacks x {args.depth} frames, "
            f"{len(pids)} processes: {per_drain * 1e3:.2f} ms per drain, "
            f"{per_drain / args.records * 1e9:.0f} ns per record (median of {args.drains})"
        )
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
