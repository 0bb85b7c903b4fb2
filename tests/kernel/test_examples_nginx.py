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
    wait_port(port, timeout=30, proc=proc)
    wait_workers(proc.pid, set())
    return proc, port, rundir


def wait_workers(master: int, old: set[int], timeout: float = 30.0) -> list[int]:
    """Wait until the master has exactly WORKERS children, none of them in ``old``."""
    deadline = time.monotonic() + timeout
    while True:
        children = [pid for pid in family_of(master) if pid != master]
        if len(children) == WORKERS and not set(children) & old:
            time.sleep(0.5)  # let them finish their set-up and go idle
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


def attribution_checks(trace: AttachedTrace) -> None:
    """The one place for this example's attribution assertions, once attribution lands.

    Still to add (issue 6, item 4): the master's copies on reload are in its heap and the
    configuration pools (malloc'd blocks of ngx_create_pool), with writer stacks under
    ngx_init_cycle; the new workers' copies under ngx_worker_process_init.
    """


def test_nginx_reload_under_light_load(tmp_path, delayacct_on, reaper):
    started = time.monotonic()
    server, port, _rundir = start_nginx(reaper)
    master = server.pid
    old = [pid for pid in family_of(master) if pid != master]
    trace = reaper(AttachedTrace(master, tmp_path, "nginx"))
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
    attribution_checks(trace)
    result = {
        "old_workers": old,
        "new_workers": new,
        "answered": answered,
        "middle_private_dirty": {str(k): v for k, v in middle.private_dirty.items()},
        "base_private_dirty": {str(k): v for k, v in trace.base.private_dirty.items()},
        "end_private_dirty": {str(k): v for k, v in trace.end.private_dirty.items()},
        "copies": {str(p["pid"]): p["copies"] for p in processes.values()},
        "delayacct_exact": all(r.ours == r.kernel for r in rows),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    trace.save(format_rows(rows, (trace.base, trace.end)), result)
