"""Cost of Python writer stacks (issue 5), A/B alternating in one run.

Wall-clock times on this shared 2-core VM swing by 2x from run to run, so the figure that
decides is the kernel's own: the run time of the fault and mm_page_alloc programs (bpf_stats,
bpftool's `run_time_ns`; the stack walks run in a program tail-called from the fault program,
and the kernel counts a tail call's time in its caller's) over a storm, divided by the copies
made.  The session runs in this process
(`Session`, as `cowtrace PID` does), so its program's counters are read from its own fd.

1. Non-Python: bench/storm.c (a child writes P shared pages) with Python stacks compiled out
   (`--no-python-stacks`) and on (the default: one hash lookup per copy).
2. Python: bench/pystorm.py (a child writes N pre-fork objects' reference counts, one page
   each) at Python stack depths 3 and 30: on minus off per copy is the cost of one captured
   Python stack (frame walk, leaf, stack-map insert).

The child's wall-clock write time is printed too (median), for the storm ratio.

Usage (root): .venv/bin/python bench/python_stacks.py [--runs 5] [--python PATH]
(the kernel's BPF run-time stats are turned on for the run, through a BPF_ENABLE_STATS fd)
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cowtrace.host import procfs  # noqa: E402
from cowtrace.session import Session, SessionOptions  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python3.12"


MEASURED = (b"mm_page_alloc", b"page_fault_user", b"page_fault_kernel")


def program_time_ns(session: Session) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the session's fault and mm_page_alloc programs, from their
    fds' fdinfo."""
    funcs = session.tracer.bpf.funcs
    time_ns = count = 0
    for name, fn in funcs.items():
        if not name.endswith(MEASURED):
            continue
        fdinfo = Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines()
        fields = dict(line.split(":\t", 1) for line in fdinfo if ":\t" in line)
        time_ns += int(fields["run_time_ns"])
        count += int(fields["run_cnt"])
    return time_ns, count


def enable_stats() -> int | None:
    """Turns the kernel's BPF run-time stats on for as long as the returned fd is open
    (BPF_ENABLE_STATS: counted, unlike the sysctl, so other users' settings are left alone);
    None when the sysctl has them on already."""
    if Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(8)  # union bpf_attr { enable_stats { u32 type } }
    fd = libc.syscall(321, 32, attr, 8)  # SYS_bpf, BPF_ENABLE_STATS, BPF_STATS_RUN_TIME = 0
    if fd < 0:
        raise SystemExit(f"BPF_ENABLE_STATS failed: errno {ctypes.get_errno()}")
    return fd


def one_run(command: list[str], stacks: bool, go_line: bool) -> dict:
    """Trace one storm; returns the child's ms, copies and program ns."""
    session = Session(0, SessionOptions(python_stacks=stacks))
    session.open()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # "ready" / "pid N ready"
        session.set_root(proc.pid)
        session.attach_root(procfs.read_stat(proc.pid), adopted=True)
        before = program_time_ns(session)
        if go_line:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        # pystorm.py: "<ms> ms"; storm.c: "<wall ms> ms wall, <cpu ms> ms cpu"
        ms = next(float(line.split()[0]) for line in proc.stdout if " ms" in line)
        proc.wait(timeout=120)
        after = program_time_ns(session)
        session.step(0.05)
        final = session.finish("done")
    finally:
        session.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    copies = final.totals.copies
    return {"ms": ms, "copies": copies, "prog_ns": after[0] - before[0]}


def report(label: str, runs: dict[str, list[dict]]) -> None:
    ns = {
        k: statistics.median(r["prog_ns"] / max(1, r["copies"]) for r in v) for k, v in runs.items()
    }
    ms = {k: statistics.median(r["ms"] for r in v) for k, v in runs.items()}
    print(
        f"{label}: program time per copy off {ns['off']:.0f} ns, on {ns['on']:.0f} ns "
        f"(+{ns['on'] - ns['off']:.0f} ns); child write time off {ms['off']:.0f} ms, on "
        f"{ms['on']:.0f} ms (on/off {ms['on'] / ms['off']:.3f}); copies "
        f"{runs['on'][-1]['copies']}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pages", type=int, default=65536)
    parser.add_argument("--objects", type=int, default=20000)
    parser.add_argument("--python", default=DEFAULT_PYTHON)
    args = parser.parse_args()
    _stats = enable_stats()  # the fd stays open until the process exits
    with tempfile.TemporaryDirectory() as tmp:
        storm = Path(tmp) / "storm"
        subprocess.run(["gcc", "-O2", "-o", str(storm), str(HERE / "storm.c")], check=True)
        cases = [("C storm", [str(storm), str(args.pages), "wait"], True)]
        for depth in (3, 30):
            cases.append(
                (
                    f"Python storm ({Path(args.python).name}, depth {depth})",
                    [args.python, str(HERE / "pystorm.py"), str(args.objects), str(depth), "wait"],
                    True,
                )
            )
        for label, command, go_line in cases:
            runs: dict[str, list[dict]] = {"off": [], "on": []}
            for _ in range(args.runs):
                for name, stacks in (("off", False), ("on", True)):
                    runs[name].append(one_run(command, stacks, go_line))
            report(label, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
