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
import os
import subprocess
import sys
import time
from collections import Counter

from cowtrace.host import smaps, taskstats
from tests.e2e import EXAMPLES, PAGE, in_function, out_dir, python_frame, share
from tests.helpers import (
    COWTRACE,
    EXIT_RECORD_TIMEOUT_S,
    UNDER_A_SHELL,
    read_jsonl,
    run_args,
    wpcopy_passes,
)

EXAMPLE = EXAMPLES / "multiprocessing" / "shared_array.py"
MIB = 64
WORKERS = 4
WRITE_FROM, WRITE_COUNT = 1000, 300_000  # float64 elements: 2.4 MB, not page-aligned


def attribution_checks(
    summary: dict, events: list[dict], array: dict, piece: dict, writer: int
) -> dict:
    """Where cowtrace says the copies are and who made them (issue 6, item 2); returns the
    measured shares for the README.

    Exact, from the events: every copy in the array (the slice's pages, test 1) is attributed
    to a plain anonymous mapping (the example's own mmap: no file, no malloc'd block), made in
    the writer by numpy's assignment loop (native leaf in numpy's copy loops) under the
    Python stack write_slice (at the assignment's line) <- multiprocessing's worker loop.  And
    no copy anywhere else has write_slice (any line) as its innermost frame but a few pages of
    the interpreter's heap.

    With a margin: the other copies (each process' own start-up and bookkeeping) are in the
    interpreter's memory: its heap (pymalloc's anonymous arenas and [heap]) and the writable
    data of the python binary (static type objects, the small-int cache: reference counts),
    measured 95% of them; asserted 85%.
    """
    slice_frame = python_frame(EXAMPLE, "write_slice", "_ARRAY[first : first + count] = -1.0")
    copies = [e for e in events if e["kind"] == "copy"]
    in_array = [
        e for e in copies if e["addr"] is not None and array["start"] <= e["addr"] < array["end"]
    ]
    assert len(in_array) == piece["pages"]
    for e in in_array:
        assert (e["pid"], e["mapping"], e["path"], e["alloc"]) == (writer, "anon", None, None), e
        assert e["pystack"] and e["pystack"][0] == slice_frame, e["pystack"]
        assert e["pystack"][1].startswith("worker ("), e["pystack"]
    # The native leaf, from the Python writer table (named from numpy's own symbols): a write
    # outside the interpreter (category "other": a C extension).  The event's native stack is
    # not asserted: once in ~6 runs its leaf did not resolve (see the README).
    slice_writers = [w for w in summary["python_writers"] if w["frames"][:1] == [slice_frame]]
    numpy_writes = [w for w in slice_writers if w["category"] == "other"]
    assert sum(w["copies"] for w in numpy_writes) == piece["pages"], slice_writers
    assert all(
        w["native_leaf"].startswith(("_aligned_", "_contig_", "_strided_", "_cast_"))
        or "_multiarray_umath" in w["native_leaf"]
        for w in numpy_writes
    ), numpy_writes
    taken = {id(e) for e in in_array}
    elsewhere = [e for e in copies if id(e) not in taken]
    # write_slice wrote little else: the objects of the assignment itself (the slice, the
    # float), in the interpreter's heap (1 page measured).
    aside = [
        e
        for e in elsewhere
        if e["pystack"] and in_function(e["pystack"][0], EXAMPLE, "write_slice")
    ]
    assert len(aside) <= 8 and all(e["mapping"] in ("anon", "heap") for e in aside), aside
    interpreter = os.path.realpath(sys.executable)
    heap = [e for e in elsewhere if e["mapping"] in ("anon", "heap")]
    binary = [e for e in elsewhere if e["mapping"] == "file" and e["path"] == interpreter]
    assert share(len(heap) + len(binary), len(elsewhere)) >= 0.85, (
        len(heap),
        len(binary),
        len(elsewhere),
    )
    return {
        "array_copies": len(in_array),
        "other_copies": len(elsewhere),
        "other_under_write_slice": [(e["mapping"], e["stack"][:1]) for e in aside],
        "other_in_heap": len(heap),
        "other_in_interpreter_binary": len(binary),
        "writer_pystack": in_array[0]["pystack"][:3],
        "writer_native_leaf": numpy_writes[0]["native_leaf"],
        "event_native_stack": in_array[0]["stack"],
    }


def test_shared_array_copies_exactly_the_written_slice(tmp_path, delayacct_on, reaper):
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    argv = run_args(
        summary_path,
        events_path,
        *UNDER_A_SHELL,  # delay accounting and cowtrace both count the example from its fork
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
    )
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
        listener.wait_for(pid, timeout=EXIT_RECORD_TIMEOUT_S)
        threads = [r for r in listener.records.values() if (r.tgid or r.pid) == pid]
        assert threads, f"no exit record for {pid}"
        kernel = sum(r.wpcopy_count or 0 for r in threads)
        rows.append((pid, p["comm"], p["copies"], p["zero_fills"], p["wp_retries"], kernel))
        assert wpcopy_passes(p) == kernel, f"pid {pid}: {rows[-1]}"
    for pid in workers:
        assert pid in processes and processes[pid]["role"] == "descendant"
    attribution = attribution_checks(summary, events, array, piece, writer)

    out = out_dir()
    if out is not None:
        table = [
            "pid comm copies zero_fills wp_retries wpcopy array_copies array_private_dirty_MiB"
        ]
        for pid, comm, copies, zeros, retries, kernel in rows:
            table.append(
                f"{pid} {comm} {copies} {zeros} {retries} {kernel} {in_array[pid]['copy']} "
                f"{held.get(pid, 0) / 2**20:.2f}"
            )
        table.append(f"writer={writer} slice_pages={piece['pages']} elapsed_s={elapsed:.1f}")
        table.append(f"attribution={json.dumps(attribution)}")
        (out / "multiprocessing.checks.txt").write_text("\n".join(table) + "\n")
        (out / "multiprocessing.json").write_text(summary_path.read_text())
        (out / "multiprocessing.stdout.txt").write_text("\n".join(map(json.dumps, lines)) + "\n")
