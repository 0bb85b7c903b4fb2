"""examples/nginx: Debian's nginx, a master and two workers on loopback, light load, a reload.

cowtrace attaches to the running master. Under light load the workers, which have long since
copied what they write per request, copy next to nothing; a reload (SIGHUP) is where copying
happens: the master parses the configuration again while the old workers still share its
pages (the master copies), then forks two new workers, which copy the master's pages they
write while they set up (the new workers copy), and the old workers exit.
Checks, per process, against the kernel's books read while the family is frozen:
- delay accounting: copies + zero-fills == wpcopy_count growth (old workers from their exit
  records, new workers from zero: they were forked while traced);
- smaps (the writer's side): each new worker's Private_Dirty holds every page it copied (a
  copy is private to its writer), plus a few pages of fresh memory that were never shared
  (bounded here by FRESH_PAGES; the measured excess is in the README).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.e2e import (
    EXAMPLES,
    PAGE,
    AttachedTrace,
    family_of,
    format_rows,
    free_port,
    relative_gap,
    share,
    wait_idle,
    wait_port,
)

HERE = EXAMPLES / "nginx"
WORKERS = 2
FRESH_PAGES = 32  # a new worker's own fresh pages next to its copies (6-7 measured)


class RunDir:
    """A world-readable scratch directory (the workers run as www-data), removed on close."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cowtrace-nginx-"))
        self.path.chmod(0o755)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def start_nginx(reaper) -> tuple[subprocess.Popen, int, Path]:
    rundir = reaper(RunDir()).path
    port = free_port()
    conf = (HERE / "nginx.conf").read_text()
    conf = conf.replace("@PORT@", str(port)).replace("@RUNDIR@", str(rundir))
    conf = conf.replace("@HTML@", str(HERE / "html"))
    (rundir / "nginx.conf").write_text(conf)
    proc = reaper(
        subprocess.Popen(
            ["nginx", "-c", str(rundir / "nginx.conf"), "-p", str(rundir), "-e",
             str(rundir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    )  # fmt: skip
    wait_port(port, proc=proc)
    wait_workers(proc.pid, set())
    return proc, port, rundir


def wait_workers(master: int, old: set[int], timeout: float = 120.0) -> list[int]:
    """Wait until the master has exactly WORKERS children, none of them in ``old``."""
    deadline = time.monotonic() + timeout
    while True:
        children = [pid for pid in family_of(master) if pid != master]
        if len(children) == WORKERS and not set(children) & old:
            wait_idle(children)  # they have finished their set-up and wait for requests
            return children
        assert time.monotonic() < deadline, f"nginx workers: {children}, old {old}"
        time.sleep(0.05)


def load(port: int, path: str = "/", requests: int = 300) -> dict:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "load.py"), "--port", str(port), "--path", path,
         "--requests", str(requests), "--concurrency", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def attribution_checks(
    trace: AttachedTrace, events: list[dict], master: int, old: list[int], new: list[int]
) -> dict:
    """Where cowtrace says each process' copies are and who made them (issue 6, item 4);
    returns the measured figures for the README.  Per process, from the events (the summary's
    tables are the family's).  Counts here are tens of pages, so shares get wide margins.

    - master: its reload copies are in its own memory: the malloc heap ([heap]: the old and
      new cycles' pools), nginx's writable data and its stack (measured 16 of 17).
    - old workers: they exit after the reload, and most of what they copy during the trace is
      exit-time copies (measured 22 of 29 and 32 of 36), made by free() and by the libraries'
      exit handlers (OpenSSL's cleanup, _dl_call_fini): memory made private just before it is
      released.  Per process in the summary (`exit_copies`, `exit_writers`).
    - new workers: mostly the malloc heap they inherited (the master's pools: blocks found by
      the heap walk at attach), with leaves in nginx's pool code (ngx_palloc,
      ngx_pool_cleanup_add, ...); no exit-time copies.
    Native stacks stop at the leaf: Debian's nginx has no frame pointers (its exported
    functions have names; static ones show as "nginx+0xOFFSET (nginx)").
    """
    processes = trace.processes()
    copies: dict[int, list[dict]] = {pid: [] for pid in processes}
    for e in events:
        if e["kind"] == "copy":
            copies[e["pid"]].append(e)
    for pid, p in processes.items():
        assert len(copies[pid]) == p["copies"], (pid, len(copies[pid]), p["copies"])

    def in_own_memory(e: dict) -> bool:
        return e["mapping"] in ("heap", "stack") or (e["path"] or "").endswith("/nginx")

    mine = copies[master]
    assert share(sum(map(in_own_memory, mine)), len(mine)) >= 0.6, mine
    assert processes[master]["exit_copies"] == 0
    exit_leaves = set()
    for pid in old:
        p = processes[pid]
        assert 0 < p["exit_copies"] <= p["copies"], p
        assert p["exit_copies"] >= p["copies"] // 3, p
        assert sum(w["copies"] for w in p["exit_writers"]) == p["exit_copies"], p
        exit_leaves |= {w["frames"][0].split(" (")[0] for w in p["exit_writers"] if w["frames"]}
    assert exit_leaves & {"_int_free", "free", "OPENSSL_cleanup", "OPENSSL_LH_flush"}, exit_leaves
    for pid in new:
        p = processes[pid]
        assert p["exit_copies"] == 0
        theirs = copies[pid]
        heap = [e for e in theirs if e["mapping"] == "heap"]
        assert share(len(heap), len(theirs)) >= 0.4, theirs
        assert sum(1 for e in heap if e["alloc"] is not None) >= len(heap) // 4, heap
        frames = {f.split(" (")[0] for e in theirs for f in e["stack"] or ()}
        assert any(f.startswith("ngx_") for f in frames), frames
    return {
        "master_copies": len(mine),
        "master_in_own_memory": sum(map(in_own_memory, mine)),
        "old_exit_copies": {str(pid): processes[pid]["exit_copies"] for pid in old},
        "old_copies": {str(pid): processes[pid]["copies"] for pid in old},
        "exit_leaves": sorted(exit_leaves),
        "new_heap_share": {
            str(pid): round(
                share(sum(e["mapping"] == "heap" for e in copies[pid]), len(copies[pid])), 3
            )
            for pid in new
        },
    }


def test_nginx_reload_under_light_load(tmp_path, delayacct_on, reaper):
    started = time.monotonic()
    server, port, _rundir = start_nginx(reaper)
    master = server.pid
    old = [pid for pid in family_of(master) if pid != master]
    events_path = tmp_path / "nginx.events.jsonl"
    # A few hundred events: the per-process attribution reads them (the summary's tables are
    # for the whole family).
    trace = reaper(
        AttachedTrace(master, tmp_path, "nginx", extra_args=("--events", str(events_path)))
    )
    trace.start()
    answered = [load(port), load(port, "/static/index.html")]
    middle = trace.snapshot()
    os.kill(master, signal.SIGHUP)
    new = wait_workers(master, set(old))
    answered.append(load(port))
    summary = trace.finish()

    processes = trace.processes()
    assert summary["totals"]["lost_events"] == 0
    assert set(processes) == {master, *old, *new}
    assert all(processes[pid]["exited"] for pid in old)
    assert not any(processes[pid]["exited"] for pid in new)
    rows = trace.delayacct_rows()
    for row in rows:
        assert relative_gap(row.ours, row.kernel) <= 0.01, row
    for pid in new:
        copied = processes[pid]["copies"] * PAGE
        private = trace.end.private_dirty[pid]
        assert copied <= private <= copied + FRESH_PAGES * PAGE, (pid, copied, private)
    assert processes[master]["copies"] > 0  # the reload parsed the configuration again
    assert all(processes[pid]["copies"] > 0 for pid in new)
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    attribution = attribution_checks(trace, events, master, old, new)
    result = {
        "old_workers": old,
        "new_workers": new,
        "answered": answered,
        "middle_private_dirty": {str(k): v for k, v in middle.private_dirty.items()},
        "base_private_dirty": {str(k): v for k, v in trace.base.private_dirty.items()},
        "end_private_dirty": {str(k): v for k, v in trace.end.private_dirty.items()},
        "copies": {str(p["pid"]): p["copies"] for p in processes.values()},
        "delayacct_exact": all(r.ours == r.kernel for r in rows),
        "attribution": attribution,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    trace.save(format_rows(rows, (trace.base, trace.end)), result)
