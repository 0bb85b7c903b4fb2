"""A target in other mount and pid namespaces, traced from the host (issue 15, item 4).

The container: `unshare --mount --pid --fork`, then `pivot_root` into a tmpfs (as container
runtimes do) holding the fixture
script at /app/fixture.py, its data file at /data/state.bin, the host's /usr bind-mounted
read-only, and the interpreter at a path of its own: Debian's python3.11 (static, no
libpython) bind-mounted at /app/bin/python3, or pyenv's 3.12 (python3.12 + libpython3.12.so)
at /opt/python.  None of /app, /data, /opt/python exist on the host: a tracer that opened the
paths of /proc/PID/maps as they are would lose the Python stacks (no interpreter found), the
script's name is only known from the code objects, and the file's name and sections from the
container's tree.  The fixture runs as the namespace's init (pid 1 inside): when it ends, the
kernel kills whatever else lives in the namespace, and `--kill-child` ends it with unshare.

The fixture (tests/fixtures/py_prefork.py) has known answers per buffer: c1 copies PAGES/4
anonymous pages in write_anon and FILE_PAGES file pages in write_file, c2 PAGES/2 in
write_anon, the parent none.  Whole processes are checked against the kernel's own count:
each child is forked while traced, so its copies + zero-fills equal its exit record's
wpcopy_count (delay accounting).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from cowtrace.host import taskstats
from tests.e2e import kill_tree, marker_line, outcomes, plain_trace_args
from tests.helpers import COWTRACE, EXIT_RECORD_TIMEOUT_S, read_jsonl, wpcopy_passes
from tests.kernel.streams import Lines, Prefork

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "py_prefork.py"
PAGE, PAGES, FILE_PAGES, BLOCK_PAGES = 4096, 256, 64, 64
SCRIPT, DATA = "/app/fixture.py", "/data/state.bin"
PYENV_312 = Path("/root/.pyenv/versions/3.12.1")
# Run as the namespace's first process: builds the root, then becomes the interpreter.
SETUP = r"""
set -e
root=$1; fixture=$2; interpreter=$3; shift 3
mount -t tmpfs -o size=64m,mode=755 cowtrace-container "$root"
mkdir -p "$root/usr" "$root/app/bin" "$root/data" "$root/proc" "$root/tmp" "$root/opt/python"
ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"; ln -s usr/bin "$root/bin"
mount --bind /usr "$root/usr"; mount -o remount,bind,ro "$root/usr"
cp "$fixture" "$root/app/fixture.py"
case "$interpreter" in
debian) touch "$root/app/bin/python3"
        mount --bind /usr/bin/python3.11 "$root/app/bin/python3"
        exe=/app/bin/python3; home=/usr; libs= ;;
pyenv)  mount --bind "$PYENV_312" "$root/opt/python"; mount -o remount,bind,ro "$root/opt/python"
        exe=/opt/python/bin/python3.12; home=/opt/python; libs=/opt/python/lib ;;
esac
cd "$root"; mkdir .old-root; pivot_root . .old-root; cd /
mount -t proc proc /proc; umount -l /.old-root; rmdir /.old-root
exec /usr/bin/env PYTHONHOME="$home" LD_LIBRARY_PATH="$libs" "$exe" "$@"
"""
INTERPRETERS = {"debian": Path("/usr/bin/python3.11"), "pyenv": PYENV_312 / "bin/python3.12"}
# The file holding the interpreter's state (_PyRuntime, .data), as the container names it.
RUNTIME_FILE = {"debian": "/app/bin/python3", "pyenv": "/opt/python/lib/libpython3.12.so.1.0"}


def container_command(root: Path, interpreter: str) -> list[str]:
    """The command that starts the fixture in a new container."""
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child=SIGKILL",
        "sh",
        "-c",
        SETUP,
        "container",
        str(root),
        str(FIXTURE),
        interpreter,
        SCRIPT,
        str(PAGES),
        str(FILE_PAGES),
        DATA,
    ]


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def stop(*processes: subprocess.Popen) -> None:
    """Kill each process and its descendants (a namespace's init takes the rest with it)."""
    for process in processes:
        kill_tree(process)


@pytest.fixture
def delayacct():
    previous = taskstats.enable_delayacct()
    yield
    taskstats.restore_delayacct(previous)


def check_trace(
    summary: dict,
    events: list[dict],
    facts: dict,
    listener: taskstats.ExitListener,
    *,
    root_ns_pid: int | None,
    interpreter: str,
) -> dict[str, int]:
    """The exact answers, the container's pids beside the host's, Python stacks and file names
    as the container sees them; returns the children's host pids by name."""
    processes = {p["pid"]: p for p in summary["processes"]}
    by_ns = {p["ns_pid"]: p["pid"] for p in summary["processes"] if p["ns_pid"] is not None}
    assert processes[summary["root_pid"]]["ns_pid"] == root_ns_pid
    host = {name: by_ns[ns] for name, ns in facts["children"].items()}
    parent = by_ns[facts["pid"]]  # the fixture's own view of its pid: 1, the namespace's init
    assert facts["pid"] == 1
    # Whole processes: the kernel's count at exit, exactly.
    for name, pid in host.items():
        record = listener.wait_for(pid, timeout=EXIT_RECORD_TIMEOUT_S)
        assert record is not None, f"no exit record for {name} ({pid})"
        got = wpcopy_passes(processes[pid])
        assert got == record.wpcopy_count, (name, got, record.wpcopy_count)
    # Per buffer: the derived answers, exactly.
    anon, data = facts["anon"], facts["file"]

    assert outcomes(events, host["c1"], *anon) == {("copy", "anon"): PAGES // 4}
    assert outcomes(events, host["c2"], *anon) == {("copy", "anon"): PAGES // 2}
    assert outcomes(events, host["c1"], *data) == {("copy", "file"): FILE_PAGES}
    assert outcomes(events, host["c2"], *data) == Counter()
    assert outcomes(events, parent, *anon) == Counter()
    assert outcomes(events, parent, *data) == Counter()
    # The block c2 writes, a page per step: each page wholly inside it (nothing else lives
    # there) is copied exactly once, by c2, and by no one else.
    block_start, block_end = facts["block"]
    steps = {(block_start + i * PAGE) & ~(PAGE - 1) for i in range(BLOCK_PAGES)}
    steps = {page for page in steps if block_start <= page and page + PAGE <= block_end}
    assert len(steps) >= BLOCK_PAGES - 1
    copied = Counter((e["pid"], e["addr"]) for e in events if e["kind"] == "copy")
    assert {key: n for key, n in copied.items() if key[1] in steps} == {
        (host["c2"], page): 1 for page in steps
    }
    # ... a block the allocator probes saw made (malloc in the container's libc, probed
    # through /proc/PID/root), with its exact address and size.
    blocks = [
        (row["origin"], row["allocator"], block["size"])
        for row in summary["allocations"]
        for block in row["largest"]
        if block["addr"] == block_start
    ]
    assert blocks == [("malloc", "glibc", block_end - block_start + 1)], blocks
    # Names as the container sees them: the data file's path, the script's in Python frames.
    in_file = [e for e in events if e["addr"] is not None and data[0] <= e["addr"] < data[1]]
    assert {(e["mapping"], e["path"]) for e in in_file} == {("file", DATA)}
    # The interpreter's sections, read from the container's file (through /proc/PID/root).
    sections = {r["section"] for r in summary["regions"] if r["name"] == RUNTIME_FILE[interpreter]}
    assert ".data" in sections, summary["regions"]
    shown = [r["name"] for r in summary["regions"]] + [
        m["path"] for m in summary.get("modules", {}).values()
    ]
    assert not [name for name in shown if name.startswith(("/proc/", "/tmp/"))], shown
    innermost = {
        "c1": {
            "anon": f"write_anon ({SCRIPT}:{marker_line(FIXTURE, 'write_anon')})",
            "file": f"write_file ({SCRIPT}:{marker_line(FIXTURE, 'write_file')})",
        },
        "c2": {
            "anon": f"write_anon ({SCRIPT}:{marker_line(FIXTURE, 'write_anon')})",
            "block": f"write_block ({SCRIPT}:{marker_line(FIXTURE, 'write_block')})",
        },
    }
    written = {
        "anon": lambda addr: anon[0] <= addr < anon[1],
        "file": lambda addr: data[0] <= addr < data[1],
        "block": lambda addr: addr in steps,
    }
    for name, expected in innermost.items():
        for kind, frame in expected.items():
            frames = Counter(
                (e["pystack"] or ["<none>"])[0]
                for e in events
                if e["pid"] == host[name] and e["addr"] is not None and written[kind](e["addr"])
            )
            assert frames == {frame: sum(frames.values())}, (name, kind, frames)
    return host


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_attach_to_a_container(interpreter, tmp_path, delayacct):
    if not INTERPRETERS[interpreter].exists():
        pytest.fail(f"{INTERPRETERS[interpreter]} is missing: the machine set-up installs it")
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "PYENV_312": str(PYENV_312)}
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    container = subprocess.Popen(
        container_command(root, interpreter),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    tracer = None
    try:
        fixture = Prefork(container)
        fixture.ready()
        (init,) = children_of(container.pid)  # the namespace's pid 1, on the host
        assert not Path(SCRIPT).exists(), f"{SCRIPT} exists on the host: the test proves nothing"
        assert not Path(DATA).exists(), f"{DATA} exists on the host: the test proves nothing"
        tracer = subprocess.Popen(
            [
                *COWTRACE,
                str(init),
                "--malloc",
                *plain_trace_args(summary_path, events_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        view = Lines(tracer.stdout)
        view.wait_for(rf" root={init} ", 60)  # the view starts once attached
        with taskstats.ExitListener() as listener:
            children = fixture.fork()
            # Both children are alive and waiting: cowtrace names them with their pids inside.
            view.wait_for_all([rf" ns_pid={ns} " for ns in children.values()], 30)
            facts = fixture.write()
            # Python frames are named from the family's memory: the parent stays until
            # cowtrace has seen both children exit (their copies are drained before that).
            view.wait_for_all([rf" ns_pid={ns} .* state=exit:0" for ns in children.values()], 30)
            fixture.exit()
            assert container.wait(timeout=30) == 0
            assert tracer.wait(timeout=60) == 0, tracer.stderr.read()
            out, err = view.text(), tracer.stderr.read()
            summary = json.loads(summary_path.read_text())
            events = read_jsonl(events_path)
            host = check_trace(
                summary, events, facts, listener, root_ns_pid=1, interpreter=interpreter
            )
    finally:
        stop(*(p for p in (container, tracer) if p is not None))
    assert summary["end_reason"] == "root exited"
    assert not alive(init)
    # The text summary: the host pid, the container's beside it.
    assert f"{init} (ns 1)" in out
    for name, pid in host.items():
        assert f"{pid} (ns {facts['children'][name]})" in out, out
    assert "Traceback" not in err, err


def test_run_a_container(tmp_path, delayacct):
    """`cowtrace run -- unshare ...`: the root is unshare, on the host; the fixture is its
    child, pid 1 in the namespace, traced from its fork, as every process of the command."""
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "PYENV_312": str(PYENV_312)}
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    tracer = subprocess.Popen(
        [
            *COWTRACE,
            "run",
            *plain_trace_args(summary_path, events_path),
            "--",
            *container_command(root, "debian"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,  # the command's
        stderr=subprocess.PIPE,  # cowtrace's view
        text=True,
        env=env,
    )
    try:
        with taskstats.ExitListener() as listener:
            fixture, view = Prefork(tracer), Lines(tracer.stderr)
            fixture.ready()
            # cowtrace has handled the interpreter's exec (Python detected, allocators probed:
            # the block is malloc'd after "go") once its view names the init python3.
            view.wait_for(r" ns_pid=1 .*comm=python3 ", 60)
            children = fixture.fork()
            view.wait_for_all([rf" ns_pid={ns} " for ns in children.values()], 30)
            facts = fixture.write()
            view.wait_for_all([rf" ns_pid={ns} .* state=exit:0" for ns in children.values()], 30)
            fixture.exit()
            assert tracer.wait(timeout=60) == 0, view.text()
            summary = json.loads(summary_path.read_text())
            events = read_jsonl(events_path)
            check_trace(summary, events, facts, listener, root_ns_pid=None, interpreter="debian")
            # Every process of the command but its root (issue 15 item 2: run's launcher) is
            # counted from its fork: each one's copies + zero-fills are the kernel's count.
            for process in summary["processes"]:
                if process["pid"] == summary["root_pid"]:
                    continue
                record = listener.wait_for(process["pid"], timeout=EXIT_RECORD_TIMEOUT_S)
                assert record is not None, process
                got = wpcopy_passes(process)
                assert got == record.wpcopy_count, (process, record.wpcopy_count)
    finally:
        stop(tracer)
    processes = {p["pid"]: p for p in summary["processes"]}
    assert processes[summary["root_pid"]]["comm"] == "unshare"
    init = [p for p in summary["processes"] if p["ns_pid"] == 1]
    assert [p["role"] for p in init] == ["child"]
    assert not alive(init[0]["pid"])
