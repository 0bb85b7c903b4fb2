"""examples/multiprocessing: a numpy array shared with a fork pool, traced by `cowtrace run`.

The answer is derived, not estimated: the parent filled every page of the array before the
fork, workers that only read it copy none of its pages, and the one worker that writes the
slice copies exactly the pages the slice covers (shared_array.pages_of). Checked per process
from cowtrace's detail events, against the kernel's delay accounting (exactly, per process)
and against smaps (the writer's array mapping holds exactly the slice as Private_Dirty; every
other process' array mapping holds none, since each page is still shared by the others).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

from cowtrace import smaps, taskstats
from tests.e2e import EXAMPLES, PAGE, out_dir
from tests.helpers import COWTRACE, read_jsonl

EXAMPLE = EXAMPLES / "multiprocessing" / "shared_array.py"
MIB = 64
WORKERS = 4
WRITE_FROM, WRITE_COUNT = 1000, 300_000  # float64 elements: 2.4 MB, not page-aligned


def attribution_checks(summary: dict, events: list[dict], array: dict, writer: int) -> None:
    """The one place for this example's attribution assertions, once attribution lands.

    Still to add (issue 6, item 2): the writer's slice copies attributed to the array's own
    anonymous mapping (all 587, no other mapping), with the Python writer stack ending in
    ``write_slice`` (and the native one in numpy's assignment loop); every process' other
    copies attributed to the interpreter's heap, not to the array.
    """


def test_shared_array_copies_exactly_the_written_slice(tmp_path, delayacct_on, reaper):
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    argv = [
        "run",
        "--quiet",
        "--json",
        str(summary_path),
        "--events",
        str(events_path),
        "--",
        # Under a shell, delay accounting and cowtrace both count the example from its fork.
        "/bin/sh",
        "-c",
        '"$@"; exit $?',
        "sh",
        sys.executable,
        str(EXAMPLE),
        "--mib",
        str(MIB),
        "--workers",
        str(WORKERS),
        "--write-from",
        str(WRITE_FROM),
        "--write-count",
        str(WRITE_COUNT),
        "--hold",
    ]
    started = time.monotonic()
    listener = reaper(taskstats.ExitListener())
    listener.open()
    proc = reaper(
        subprocess.Popen(
            [*COWTRACE, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
    )
    assert proc.stdout is not None and proc.stdin is not None
    lines = []
    for line in proc.stdout:
        lines.append(json.loads(line))
        if "holding" in lines[-1]:
            break
    facts = {k: v for obj in lines for k, v in obj.items() if k in ("array", "slice", "parent")}
    workers = next(obj["workers"] for obj in lines if "workers" in obj)
    array, piece = facts["array"], facts["slice"]
    writer = next(obj["pid"] for obj in lines if obj.get("task") == "write")
    assert (
        piece["pages"]
        == (WRITE_FROM * 8 + WRITE_COUNT * 8 - 1) // PAGE - WRITE_FROM * 8 // PAGE + 1
    )

    # smaps while everyone is alive and idle: the array has a VMA of its own.
    held: dict[int, int] = {}
    for pid in [facts["parent"], *workers]:
        maps = smaps.read_smaps(pid)
        own = [m for m in maps if m.overlaps(array["start"], array["end"])]
        assert [(m.start, m.end) for m in own] == [(array["start"], array["end"])]
        held[pid] = own[0].private_dirty
    proc.stdin.write("\n")
    proc.stdin.close()
    lines += [json.loads(line) for line in proc.stdout]
    assert proc.wait(timeout=60) == 0
    elapsed = time.monotonic() - started

    summary = json.loads(summary_path.read_text())
    events = read_jsonl(events_path)
    processes = {p["pid"]: p for p in summary["processes"]}
    assert summary["totals"]["lost_events"] == 0

    # 1. The derived answer, per process, in the array.
    in_array: dict[int, Counter] = {pid: Counter() for pid in processes}
    in_slice = Counter()
    for e in events:
        if e["addr"] is not None and array["start"] <= e["addr"] < array["end"]:
            in_array[e["pid"]][e["kind"]] += 1
            if piece["first_page"] <= e["addr"] < piece["end"]:
                in_slice[e["pid"]] += 1
    for pid in [facts["parent"], *workers]:
        expected = piece["pages"] if pid == writer else 0
        assert in_array[pid] == Counter({"copy": expected} if expected else {}), f"pid {pid}"
    assert in_slice == Counter({writer: piece["pages"]})

    # 2. smaps: the writer's new pages are private to it; every other page is still shared.
    for pid, private in held.items():
        assert private == (piece["pages"] * PAGE if pid == writer else 0), f"pid {pid}"

    # 3. Delay accounting: copies + zero-fills == wpcopy_count, exactly, for every process
    # of the example (the root shell is counted by cowtrace from its exec only).
    rows = []
    for pid, p in processes.items():
        if p["role"] == "root":
            continue
        listener.wait_for(pid, timeout=5.0)
        threads = [r for r in listener.records.values() if (r.tgid or r.pid) == pid]
        assert threads, f"no exit record for {pid}"
        kernel = sum(r.wpcopy_count or 0 for r in threads)
        rows.append((pid, p["comm"], p["copies"], p["zero_fills"], kernel))
        assert p["copies"] + p["zero_fills"] == kernel, f"pid {pid}: {rows[-1]}"
    for pid in workers:
        assert pid in processes and processes[pid]["role"] == "descendant"
    attribution_checks(summary, events, array, writer)

    out = out_dir()
    if out is not None:
        table = ["pid comm copies zero_fills wpcopy array_copies array_private_dirty_MiB"]
        for pid, comm, copies, zeros, kernel in rows:
            table.append(
                f"{pid} {comm} {copies} {zeros} {kernel} {in_array[pid]['copy']} "
                f"{held.get(pid, 0) / 2**20:.2f}"
            )
        table.append(f"writer={writer} slice_pages={piece['pages']} elapsed_s={elapsed:.1f}")
        (out / "multiprocessing.checks.txt").write_text("\n".join(table) + "\n")
        (out / "multiprocessing.json").write_text(summary_path.read_text())
        (out / "multiprocessing.stdout.txt").write_text("\n".join(map(json.dumps, lines)) + "\n")
