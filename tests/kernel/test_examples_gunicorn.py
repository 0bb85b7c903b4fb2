"""examples/gunicorn: gunicorn --preload, 4 sync workers, a preloaded table, bounded load.

cowtrace attaches to the running master (as a user would: `cowtrace PID --json ...`, ended
with Ctrl-C). No answer can be derived for a real server, so every process is checked against
the kernel's books, read while the family is frozen (tests/e2e.py):
- delay accounting: copies + zero-fills == the growth of wpcopy_count, per process (the
  acceptance bound is 1%; with the frozen readings it is exact in practice);
- smaps: each worker's Private_Dirty grows by the pages it copied (the writer's side: the
  page left behind stays shared by the master and the other workers), within 2% (the rest is
  fresh memory a worker allocates while serving, which is not copy-on-write).
And the point of the example: with gc.freeze() at the end of the master's import, each worker
copies fewer pages than without.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import (
    EXAMPLES,
    PAGE,
    REPO,
    AttachedTrace,
    family_of,
    format_rows,
    free_port,
    in_function,
    python_frame,
    relative_gap,
    share,
    wait_idle,
    wait_port,
)

HERE = EXAMPLES / "gunicorn"
WORKERS = 4
# About 100 MB of Python objects, the small end of the example; the README's full-size figures
# come from GUNICORN_EXAMPLE_RECORDS=450000 (about 265 MB).
RECORDS = int(os.environ.get("GUNICORN_EXAMPLE_RECORDS", "170000"))
REQUESTS = 800
PY311 = Path("/usr/bin/python3")
PY312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")


def gunicorn_venv(python: Path) -> Path:
    """A venv with the pinned gunicorn for ``python``, made once and cached under .cache/."""
    assert python.exists(), f"{python} is missing: the example needs it to run the app"
    version = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = REPO / ".cache" / "examples" / f"gunicorn-py{version}"
    stamp = venv / ".installed"
    requirements = HERE / "requirements.txt"
    if not stamp.exists() or stamp.read_text() != requirements.read_text():
        subprocess.run([str(python), "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin/pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
                str(requirements),
            ],
            check=True,
        )
        stamp.write_text(requirements.read_text())
    return venv


def start_gunicorn(venv: Path, port: int, env_extra: dict, reaper) -> subprocess.Popen:
    env = {**os.environ, "APP_RECORDS": str(RECORDS), **env_extra}
    proc = reaper(
        subprocess.Popen(
            [
                str(venv / "bin/gunicorn"),
                "--preload",
                "--workers",
                str(WORKERS),
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{port}",
                "--chdir",
                str(HERE),
                "--log-level",
                "warning",
                "app:app",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    )
    wait_port(port, proc=proc)
    deadline = time.monotonic() + 120
    while len(family_of(proc.pid)) < WORKERS + 1:
        assert time.monotonic() < deadline, "gunicorn did not start its workers"
        time.sleep(0.05)
    # the workers have finished booting and wait for connections (readiness, not a pause)
    wait_idle([pid for pid in family_of(proc.pid) if pid != proc.pid])
    return proc


def load(port: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "load.py"),
            "--port",
            str(port),
            "--requests",
            str(REQUESTS),
            "--concurrency",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def attribution_checks(variant: str, trace: AttachedTrace) -> dict:
    """What cowtrace says caused the copies (issue 5 acceptance, issue 6 item 1); returns the
    measured shares for the README.  No exact answer exists for a real server, so each share is
    asserted with a wide margin around what was measured (in the README: 3.11 default gc 69%,
    refcount 29-31%; freeze gc 0.1%, refcount 99.7%; 3.12 gc 69%).

    - Every worker is a CPython process: (nearly) every copy carries a Python stack.
    - The copies are in the interpreter's heap: pymalloc's arenas are anonymous mappings (256
      KiB arenas, 3.11; 1 MiB, 3.12), plus [heap] for objects too big for pymalloc.
    - The request handler (app.app) is the innermost frame of the copies: its reference-count
      writes (at the lines of its loop over the records: the top refcount writer runs one of
      them), and, in the default variant, its gc.collect() (a C function: no frame of its own).
    - Without gc.freeze() the collector (category gc: the interpreter's collecting flag was set)
      makes most of the copies; with it, next to none, and the refcount writes of the handler
      are what is left.
    """
    summary = trace.summary
    total = summary["totals"]["copies"]
    app_py = HERE / "app.py"
    loop_lines = {
        python_frame(app_py, "app", "rec = DATA[rng.randrange(hot)]"),
        python_frame(app_py, "app", 'total += rec["score"] + len(rec["name"])'),
    }
    writers = summary["python_writers"]
    by_category: dict[str, int] = {}
    for w in writers:
        by_category[w["category"]] = by_category.get(w["category"], 0) + w["copies"]
    with_stack = sum(by_category.values())
    assert share(with_stack, total) >= 0.95, (variant, with_stack, total)
    gc = share(by_category.get("gc", 0), total)
    refcount = share(by_category.get("refcount", 0), total)
    in_handler = [w for w in writers if w["frames"] and in_function(w["frames"][0], app_py, "app")]
    under_handler = share(sum(w["copies"] for w in in_handler), total)
    handler_refcount = [w for w in in_handler if w["category"] == "refcount"]
    top_refcount = next(w for w in writers if w["category"] == "refcount")
    assert top_refcount["frames"][0] in loop_lines, top_refcount
    assert under_handler >= 0.9, (variant, under_handler)
    handler_share = share(sum(w["copies"] for w in handler_refcount), total)
    why = summary["why"]
    assert any(
        line.startswith(f"reference counting on objects reached from {frame} (")
        for line in why
        for frame in loop_lines
    ), why
    if variant == "freeze":
        assert gc <= 0.02, (variant, gc, by_category)
        assert handler_share >= 0.8, (variant, handler_share)
        assert writers[0]["frames"][0] in loop_lines and writers[0]["category"] == "refcount"
        assert not any(line.startswith("garbage collection") for line in why), why
    else:
        assert gc >= 0.5, (variant, gc, by_category)
        assert handler_share >= 0.15, (variant, handler_share)
        assert why[0].startswith("garbage collection ("), why
    if variant == "py312":
        # pyenv's libpython keeps its symbols: the collector's leaf has a name (Debian's
        # python3.11 is stripped of static functions: "python3.11+0x...").
        gc_writers = [w for w in writers if w["category"] == "gc"]
        named = sum(w["copies"] for w in gc_writers if w["native_leaf"] == "gc_collect_main")
        assert share(named, by_category["gc"]) >= 0.9, gc_writers[:3]

    regions = summary["regions"]
    anon = sum(r["copies"] for r in regions if r["kind"] == "anon" and r["name"] == "")
    heap = sum(r["copies"] for r in regions if r["kind"] == "heap")
    assert share(anon, total) >= 0.9, (variant, anon, total)
    assert share(anon + heap, total) >= 0.97, (variant, anon, heap, total)
    return {
        "gc_share": round(gc, 4),
        "refcount_share": round(refcount, 4),
        "handler_refcount_share": round(handler_share, 4),
        "under_handler_share": round(under_handler, 4),
        "with_python_stack_share": round(share(with_stack, total), 4),
        "anon_share": round(share(anon, total), 4),
        "heap_share": round(share(heap, total), 4),
        "copies_by_category": by_category,
        "why": why,
    }


def run_variant(name: str, venv: Path, env_extra: dict, tmp_path: Path, reaper) -> dict:
    started = time.monotonic()
    port = free_port()
    server = start_gunicorn(venv, port, env_extra, reaper)
    trace = reaper(AttachedTrace(server.pid, tmp_path, f"gunicorn-{name}"))
    trace.start()
    answered = load(port)
    summary = trace.finish()
    processes = trace.processes()
    assert summary["totals"]["lost_events"] == 0
    workers = [p for p in processes.values() if p["role"] == "child"]
    assert len(workers) == WORKERS and all(not p["exited"] for p in workers)
    assert processes[server.pid]["role"] == "root"

    # 1. Delay accounting, per process.
    rows = trace.delayacct_rows()
    for row in rows:
        assert relative_gap(row.ours, row.kernel) <= 0.01, f"{name}: {row}"
    # 2. smaps, the writer's side: each worker's Private_Dirty grew by its copies.
    grown = {
        p["pid"]: trace.end.private_dirty[p["pid"]] - trace.base.private_dirty[p["pid"]]
        for p in workers
    }
    for p in workers:
        copied = p["copies"] * PAGE
        assert abs(grown[p["pid"]] - copied) <= 0.02 * copied, f"{name}: {p}, grew {grown}"
    attribution = attribution_checks(name, trace)

    per_worker = [p["copies"] for p in workers]
    result = {
        "variant": name,
        "answered": answered,
        "copies_per_worker": per_worker,
        "mean_copied_mib_per_worker": statistics.mean(per_worker) * PAGE / 2**20,
        "private_dirty_growth_mib": {str(k): v / 2**20 for k, v in grown.items()},
        "family_copies": summary["totals"]["copies"],
        "predicted_gc_freeze_copies": {
            r["remedy"]: r["avoids_copies"] for r in summary.get("python_remedies", [])
        }.get("gc_freeze", 0),
        "delayacct_exact": all(r.ours == r.kernel for r in rows),
        "attribution": attribution,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    trace.save(format_rows(rows, (trace.base, trace.end)), result)
    return result


@pytest.fixture(scope="module")
def venv311() -> Path:
    return gunicorn_venv(PY311)


@pytest.fixture(scope="module")
def venv312() -> Path:
    return gunicorn_venv(PY312)


def test_gc_freeze_means_fewer_copies_per_worker(venv311, tmp_path, delayacct_on, reaper):
    default = run_variant("default", venv311, {}, tmp_path, reaper)
    frozen = run_variant("freeze", venv311, {"APP_GC_FREEZE": "1"}, tmp_path, reaper)
    ratio = frozen["mean_copied_mib_per_worker"] / default["mean_copied_mib_per_worker"]
    # Every worker made at least one full collection: without freeze it wrote the collector's
    # header of every record; with freeze, only the refcounts of the records it read.
    assert max(frozen["copies_per_worker"]) < min(default["copies_per_worker"])
    assert ratio < 0.8, (default, frozen)
    # cowtrace's own explanation of the saving: the collector's copies are gone.
    assert frozen["attribution"]["gc_share"] < default["attribution"]["gc_share"] / 10
    # Issue 14, item 3: the saving cowtrace predicts for gc.freeze() from the default run
    # alone is within 20% of the saving measured with it, in cowtrace's count and in smaps.
    predicted = default["predicted_gc_freeze_copies"] * PAGE
    saved = (sum(default["copies_per_worker"]) - sum(frozen["copies_per_worker"])) * PAGE
    grown = {
        name: sum(r["private_dirty_growth_mib"].values()) * 2**20
        for name, r in (("default", default), ("freeze", frozen))
    }
    saved_smaps = grown["default"] - grown["freeze"]
    assert abs(predicted - saved) <= 0.20 * saved, (predicted, saved)
    assert abs(predicted - saved_smaps) <= 0.20 * saved_smaps, (predicted, saved_smaps)


def test_python312(venv312, tmp_path, delayacct_on, reaper):
    result = run_variant("py312", venv312, {}, tmp_path, reaper)
    assert min(result["copies_per_worker"]) > 0
