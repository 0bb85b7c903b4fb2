"""Python writer stacks against the real kernel, on every CPython this machine has.

The fixture (tests/fixtures/py_writers.py, which derives the answers) has its child write the
reference counts of 100, 200 and 300 pre-fork objects, one object header per page, from
touch_one, touch_two and touch_three, then run gc.collect() over 300 tracked tuples whose gc
headers sit on pages of their own.  So, exactly:
  - each header page of a function's objects is copied once, with that function as the
    innermost frame (--events "pystack");
  - the three functions are the top refcount writers, with 100, 200 and 300 copies give or take
    a few (the list the function reads; a copy under another native leaf, in a row of its own);
  - every tuple's gc header page is copied with the collector running: category gc, under the
    Python frame that called gc.collect() (child), and the "why" lines name the collector.
The threaded variant adds a thread whose 150 pages must carry the thread's own stack.

Every frame shows the line being executed, exactly: the innermost one the loop that writes, its
callers the lines calling (found in the fixture by their marker comments).
"""

from __future__ import annotations

import html
import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from cowtrace.report.load import load_report
from cowtrace.report.pprof import render_pprof
from tests.e2e import marker_line, trace_python_fixture, wait_until
from tests.helpers import COWTRACE, bpf_map_has_key, read_jsonl, run_cowtrace
from tests.kernel.streams import Lines, send
from tests.pprof_reader import read_pprof, stacks

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "py_writers.py"
PYENV = Path("/root/.pyenv/versions")
INTERPRETERS = {
    "3.11": PYENV / "3.11.7/bin/python3.11",
    "3.11-debian": Path("/usr/bin/python3.11"),
    "3.12": PYENV / "3.12.1/bin/python3.12",
    "3.13": PYENV / "3.13.0/bin/python3.13",
}
UNIT = 100
SLACK = 4  # extra pages a function may copy besides its objects' headers (its list, frame)


def frame(function: str, marker: str) -> str:
    """How cowtrace names a frame of the fixture running the line marked `@marker`."""
    return f"{function} ({FIXTURE}:{marker_line(FIXTURE, marker)})"


def fixture_stack(*innermost: str) -> list[str]:
    """The Python stack in the fixture's child: `innermost` frames over child, main, <module>."""
    return [
        *innermost,
        frame("main", "call child"),
        frame("<module>", "call main"),
    ]


def stacks_by_page(events: list[dict], pid: int) -> dict[int, list[str] | None]:
    """The whole Python stack of each page the child copied (first copy)."""
    pages: dict[int, list[str] | None] = {}
    for event in events:
        if event["pid"] == pid and event["kind"] == "copy" and event["addr"] is not None:
            pages.setdefault(event["addr"], event["pystack"])
    return pages


def innermost_by_page(events: list[dict], pid: int) -> dict[int, str]:
    """The innermost Python function of each page the child copied (first copy)."""
    pages: dict[int, str] = {}
    for event in events:
        if event["pid"] == pid and event["kind"] == "copy" and event["addr"] is not None:
            frames = event["pystack"] or ["<none>"]
            pages.setdefault(event["addr"], frames[0].split(" (")[0])
    return pages


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_python_writers_and_collector(version, tmp_path):
    facts, summary, events = trace_python_fixture(INTERPRETERS[version], FIXTURE, tmp_path)
    assert facts["version"] == version.split("-")[0]
    pages = innermost_by_page(events, facts["child"])

    # Exact, page by page: each function's object headers were copied by that function.
    for name, expected in facts["pages"].items():
        assert len(expected) == UNIT * {"touch_one": 1, "touch_two": 2, "touch_three": 3}[name]
        assert Counter(pages.get(page, "<not copied>") for page in expected) == {
            name: len(expected)
        }
    # ... at the line executing: the loop, called from its line in child(), from main()...
    stacks = stacks_by_page(events, facts["child"])
    for name, expected in facts["pages"].items():
        stack = fixture_stack(frame(name, name), frame("child", f"call {name}"))
        assert [stacks[page] for page in expected] == [stack] * len(expected), name
    # The collector's writes: every tuple's gc header page, under the caller of gc.collect(),
    # at the line calling it.
    assert Counter(pages.get(page, "<not copied>") for page in facts["gc_pages"]) == {
        "child": len(facts["gc_pages"])
    }
    gc_stack = fixture_stack(frame("child", "call gc.collect"))
    assert [stacks[page] for page in facts["gc_pages"]] == [gc_stack] * len(facts["gc_pages"])

    # The summary: the three functions' loops are the top refcount writers, 1:2:3.
    refcount: Counter[str] = Counter()
    gc_copies = 0
    for writer in summary["python_writers"]:
        assert writer["copied_bytes"] == writer["copies"] * 4096
        innermost = writer["frames"][0] if writer["frames"] else ""
        if writer["category"] == "refcount":
            refcount[innermost] += writer["copies"]
        if writer["category"] == "gc":
            gc_copies += writer["copies"]
            assert writer["frames"] == gc_stack, writer  # apart from the functions: own rows
    loops = {name: frame(name, name) for name in ("touch_one", "touch_two", "touch_three")}
    top = [name for name, _ in refcount.most_common(3)]
    assert top == [loops["touch_three"], loops["touch_two"], loops["touch_one"]]
    for name, share in (("touch_one", 1), ("touch_two", 2), ("touch_three", 3)):
        # A copy or two may sit in a row of its own (another native leaf) below the listed rows.
        assert abs(refcount[loops[name]] - UNIT * share) <= SLACK, refcount
    assert gc_copies >= len(facts["gc_pages"])
    assert any(line.startswith("garbage collection (") for line in summary["why"])
    assert any(f"reached from {loops['touch_three']} (" in line for line in summary["why"])


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_writer_thread_has_its_own_stack(version, tmp_path):
    facts, summary, events = trace_python_fixture(
        INTERPRETERS[version], FIXTURE, tmp_path, "threads"
    )
    pages = innermost_by_page(events, facts["child"])
    assert len(facts["thread_pages"]) == 150
    assert Counter(pages.get(page, "<not copied>") for page in facts["thread_pages"]) == {
        "thread_toucher": 150
    }
    loop = frame("thread_toucher", "thread_toucher")
    stacks = stacks_by_page(events, facts["child"])
    assert {stacks[page][0] for page in facts["thread_pages"]} == {loop}
    # The thread's stack goes down to threading's bootstrap, not to the main thread's child().
    stacks = [w["frames"] for w in summary["python_writers"] if w["frames"]]
    thread_stacks = [f for f in stacks if f[0].startswith("thread_toucher (")]
    assert thread_stacks and all(
        not any(frame.startswith("child (") for frame in f) for f in thread_stacks
    )


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_freeze_spares_the_collector(version, tmp_path):
    """With gc.freeze() before the fork the child's collection copies none of the tuples' gc
    pages, while the functions' copies stay as they were."""
    facts, summary, events = trace_python_fixture(
        INTERPRETERS[version], FIXTURE, tmp_path, "freeze"
    )
    pages = innermost_by_page(events, facts["child"])
    stacks = stacks_by_page(events, facts["child"])
    for name, expected in facts["pages"].items():
        assert Counter(pages.get(page, "<not copied>") for page in expected) == {
            name: len(expected)
        }
        stack = fixture_stack(frame(name, name), frame("child", f"call {name}"))
        assert [stacks[page] for page in expected] == [stack] * len(expected), name
    assert Counter(pages.get(page, "<not copied>") for page in facts["gc_pages"]) == {
        "<not copied>": len(facts["gc_pages"])
    }
    gc_copies = sum(w["copies"] for w in summary["python_writers"] if w["category"] == "gc")
    assert gc_copies < len(facts["gc_pages"]) // 4  # objects made after the freeze only


def assert_each_page_named_by_its_writer(facts: dict, events: list[dict]) -> None:
    """py_code_reuse.py: child A's 40 pages under `first`, child B's 70 under `second`."""
    for name, child, pages, count in zip(
        ("first", "second"), facts["children"], facts["pages"], (40, 70), strict=True
    ):
        assert len(pages) == count
        stacks = stacks_by_page(events, child)
        innermost = [(stacks.get(page) or ["<none>"])[0] for page in pages]
        assert Counter(innermost) == {f"{name} (<{name}>:2)": count}, name


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_a_code_address_taken_by_another_code_object(version, tmp_path):
    """Issue 14: `first` writes 40 pre-fork header pages in child A; its code object is freed
    and `second`'s lands at its address; `second` writes 70 others in child B
    (tests/fixtures/py_code_reuse.py).  Each page carries the name of the function that wrote
    it, not the first one seen at the address."""
    reuse = FIXTURE.parent / "py_code_reuse.py"
    facts, _summary, events = trace_python_fixture(INTERPRETERS[version], reuse, tmp_path)
    assert facts["version"] == version.split("-")[0]
    assert facts["addrs"][0] == facts["addrs"][1], "second never landed at first's address"
    assert_each_page_named_by_its_writer(facts, events)


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_a_code_address_taken_on_the_same_stack_is_named_again_after_its_age(version, tmp_path):
    """Issue 14: as above, but both children fork and call from one line each
    (py_code_reuse.py same-line), so the kernel keeps one stack for both: B's copies carry the
    id A's were named under.  The session, aging its stacks every half second, deletes A's
    stack from the kernel before B writes: B's first copy stores it anew, and it is named
    against B's memory."""
    reuse = FIXTURE.parent / "py_code_reuse.py"
    facts, _summary, events = trace_python_fixture(
        INTERPRETERS[version], reuse, tmp_path, "same-line", stack_age_s=0.5
    )
    assert facts["addrs"][0] == facts["addrs"][1], "second never landed at first's address"
    assert_each_page_named_by_its_writer(facts, events)
    first_pages, second_pages = (stacks_by_page(events, c) for c in facts["children"])
    outer = {tuple(first_pages[p][1:]) for p in facts["pages"][0]}
    assert outer == {tuple(second_pages[p][1:]) for p in facts["pages"][1]}  # one stack
    assert len(outer) == 1


def child_copies(summary: dict, pid: int) -> int:
    (process,) = [p for p in summary["processes"] if p["pid"] == pid]
    return process["copies"]


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_gc_freeze_saving_predicted_from_a_run_without_it(version, tmp_path):
    """Issue 14, item 3: the gc.freeze() saving cowtrace predicts from a run without the freeze
    (python_remedies' gc_freeze: the copies whose write was the collector's) equals, within
    10%, what a second run with gc.freeze() before the fork saves in the child; the prediction
    covers at least every tuple's gc header page."""
    runs = {name: tmp_path / name for name in ("without", "with")}
    for path in runs.values():
        path.mkdir()
    without, summary, _ = trace_python_fixture(INTERPRETERS[version], FIXTURE, runs["without"])
    with_freeze, frozen, _ = trace_python_fixture(
        INTERPRETERS[version], FIXTURE, runs["with"], "freeze"
    )
    saved = child_copies(summary, without["child"]) - child_copies(frozen, with_freeze["child"])
    remedies = {r["remedy"]: r for r in summary["python_remedies"]}
    predicted = remedies["gc_freeze"]["avoids_copies"]
    assert remedies["gc_freeze"]["avoids_bytes"] == predicted * 4096
    assert predicted >= len(without["gc_pages"])
    assert abs(predicted - saved) <= 0.10 * saved, (predicted, saved)
    # The refcount writes of the three functions are what moving data out of objects saves.
    assert remedies["data_out_of_objects"]["avoids_copies"] >= 6 * UNIT
    assert [r["remedy"] for r in summary["python_remedies"]] == sorted(
        remedies, key=lambda name: -remedies[name]["avoids_copies"]
    )


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_teardown_is_reported_apart(version, tmp_path):
    """Objects released by the interpreter's teardown (a module global's) are copied with no
    Python frame left, category teardown, and a "why" line says so."""
    facts, summary, events = trace_python_fixture(
        INTERPRETERS[version], FIXTURE, tmp_path, "teardown"
    )
    stacks = {}
    for event in events:
        if event["pid"] == facts["child"] and event["kind"] == "copy":
            stacks.setdefault(event["addr"], event["pystack"])
    teardown_pages = facts["teardown_pages"]
    assert len(teardown_pages) == 120
    assert [stacks.get(page) for page in teardown_pages] == [[]] * len(teardown_pages)
    teardown = sum(w["copies"] for w in summary["python_writers"] if w["category"] == "teardown")
    assert teardown >= len(teardown_pages)
    assert any(line.startswith("interpreter teardown at exit (") for line in summary["why"])


# How long the scripts' parent outlives its child: code objects are named by reading them from
# a live process of the family (see the report's known limits), by cowtrace's thread that names
# each new stack within milliseconds of its capture.  Nothing outside cowtrace shows that it
# has, so this is a pause, with room for a machine whose cores are all busy.
PARENT_STAYS_S = 2


def _layout_set(tracer: int) -> bool:
    """Whether cowtrace `tracer` has told its kernel program the CPython layout of its command
    (the launcher it spawned, exec'd into the command: its child)."""
    try:
        children = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
    except OSError:
        return False
    return any(bpf_map_has_key(tracer, "py_procs", int(child)) for child in children)


def run_released_once_found(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`cowtrace ARGS`: a `run` of a CPython script that reads one line from its stdin before
    it forks, the line sent once cowtrace has found the interpreter (it does at the exec, once
    libpython is mapped) and told its kernel program the layout: the child's writes then carry
    Python stacks however long that took, which a pause in the script could only guess."""
    tracer = subprocess.Popen(
        [*COWTRACE, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = Lines(tracer.stdout), Lines(tracer.stderr)
    try:
        wait_until(
            lambda: tracer.poll() is not None or _layout_set(tracer.pid),
            120,
            "cowtrace tells its kernel program the command's CPython layout",
        )
        if tracer.poll() is None:
            send(tracer, "go")
        tracer.wait(timeout=300)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    return subprocess.CompletedProcess(tracer.args, tracer.returncode, stdout.text(), stderr.text())


def test_run_detects_python_at_exec_and_c_programs_get_no_stack(fixture_binaries, tmp_path):
    """`cowtrace run`: the layout is set once the command has exec'd and mapped libpython (the
    script forks only once it is: run_released_once_found); a C program's copies carry no
    stack.

    The script's parent outlives its child (PARENT_STAYS_S)."""
    script = (
        "import os, sys, time\n"
        "def build():\n    return [bytes(5000) + bytes([i % 7]) for i in range(50)]\n"
        "def touch_in_child(objects):\n    for _o in objects:\n        pass\n"
        "objects = build()\nsys.stdin.readline()\npid = os.fork()\n"
        "if pid == 0:\n    touch_in_child(objects)\n    os._exit(0)\nos.waitpid(pid, 0)\n"
        f"time.sleep({PARENT_STAYS_S})\n"
    )
    summary_path = tmp_path / "summary.json"
    result = run_released_once_found(
        [
            "run",
            "--quiet",
            "--json",
            str(summary_path),
            "--",
            str(INTERPRETERS["3.12"]),
            "-c",
            script,
        ]
    )
    assert result.returncode == 0, result.stderr
    writers = json.loads(summary_path.read_text())["python_writers"]
    touched = sum(
        w["copies"] for w in writers if w["frames"] and w["frames"][0].startswith("touch_in_child")
    )
    assert 50 <= touched <= 50 + SLACK
    # The lines executing: the loop (line 5 of the script), called from line 11.
    lines = script.splitlines()
    loop = lines.index("    for _o in objects:") + 1
    call = lines.index("    touch_in_child(objects)") + 1
    at_loop = sum(
        w["copies"]
        for w in writers
        if w["frames"] == [f"touch_in_child (<string>:{loop})", f"<module> (<string>:{call})"]
    )
    assert 50 <= at_loop <= touched

    # Its pprof profile, read back through profile.proto, holds every copy once: each Python
    # stack stands on the native stack whose leaf names the same code (a Python writer's leaf
    # has no module, the native frame has one), none counted twice.
    summary = load_report(str(summary_path))
    assert summary.writers, "the run captured no native stacks"
    samples = stacks(read_pprof(render_pprof(summary)))
    assert sum(values[0] for _, values in samples) == summary.totals.copies
    assert sum(values[1] for _, values in samples) == summary.totals.copied_bytes
    assert "touch_in_child" in {frames[0].function for frames, _ in samples}

    events_path = tmp_path / "events.jsonl"
    binary = fixture_binaries("child_writes")
    result = run_cowtrace(["run", "--quiet", "--events", str(events_path), "--", str(binary), "64"])
    assert result.returncode == 0, result.stderr
    events = read_jsonl(events_path)
    assert sum(1 for event in events if event["kind"] == "copy") >= 64
    assert all(event["pystack"] is None for event in events)


RUN_SCRIPT = f"""\
import os, sys, time
def build():
    return [bytes(5000) + bytes([i % 7]) for i in range(50)]
def touch_in_child(objects):
    for _o in objects:  # @loop
        pass
objects = build()
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    touch_in_child(objects)  # @call
    os._exit(0)
os.waitpid(pid, 0)
time.sleep({PARENT_STAYS_S})
"""


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_run_mode_shows_executing_lines_everywhere(version, tmp_path):
    """`cowtrace run` on a script: the child's writes carry the loop's line under the line
    calling it, in the summary's python_writers, every --events pystack, the closing summary
    printed on stderr (the live view's text form), `report` (text, from the summary) and the
    HTML flame graph (from the event log)."""
    script = tmp_path / "script.py"
    script.write_text(RUN_SCRIPT)
    lines = RUN_SCRIPT.splitlines()
    loop = next(i for i, line in enumerate(lines, 1) if line.endswith("@loop"))
    call = next(i for i, line in enumerate(lines, 1) if line.endswith("@call"))
    stack = [f"touch_in_child ({script}:{loop})", f"<module> ({script}:{call})"]
    summary_path, events_path = tmp_path / "summary.json", tmp_path / "events.jsonl"
    result = run_released_once_found(
        ["run", "--json", str(summary_path), "--events", str(events_path), "--"]
        + [str(INTERPRETERS[version]), str(script)]
    )
    assert result.returncode == 0, result.stderr

    writers = json.loads(summary_path.read_text())["python_writers"]
    in_child = [w for w in writers if w["frames"][:1] == stack[:1]]
    assert sum(w["copies"] for w in in_child) >= 50, writers
    assert all(w["frames"] == stack for w in in_child), in_child
    # Every event under touch_in_child: the same two lines.
    pystacks = [e["pystack"] for e in read_jsonl(events_path) if e.get("pystack")]
    under = [p for p in pystacks if p[0].startswith("touch_in_child (")]
    assert len(under) >= 50 and all(p == stack for p in under), under[:3]
    # The closing summary's writer rows (wrapped at the terminal's width: compared unwrapped).
    closing = "".join((result.stdout + result.stderr).split())
    assert "".join(" ← ".join(stack).split()) in closing

    text = run_cowtrace(["report", str(summary_path)])
    assert text.returncode == 0, text.stderr
    unwrapped = "".join(text.stdout.split())
    assert all("".join(frame_name.split()) in unwrapped for frame_name in stack), text.stdout
    page_path = tmp_path / "report.html"
    page = run_cowtrace(["report", str(events_path), "--html", str(page_path)])
    assert page.returncode == 0, page.stderr
    flame = page_path.read_text().split('<svg id="flame"', 1)[1].split("</svg>", 1)[0]
    for frame_name in stack:
        assert f"<title>{html.escape(frame_name)}\n" in flame, frame_name
