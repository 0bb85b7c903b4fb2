"""Copies by Python type against the real kernel, on every CPython this machine has.

The fixture (tests/fixtures/py_types.py, which derives the answers) builds 20000 instances of
each of three classes one class after the other, forks, and its child reads an attribute of
every Alpha and every Charlie (a reference count write per instance), never a Bravo.  So every
page of Alpha's and Charlie's pools is copied, and their copied bytes are the bytes their
instances occupy (the sum of their pymalloc blocks, GC header and pre-header included),
in most runs exactly, and as many objects; Bravo's are copied by nobody but on a page shared
with a touched pool: about zero, though it occupies more memory than either.  100 large
objects (Delta, 4.8 KB tuples: glibc blocks, found by the heap walk at attach) are touched
too: their bytes on the copied pages are resolved through those blocks.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e import python_fixture, trace_python_fixture
from tests.kernel.test_python_stacks import INTERPRETERS

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "py_types.py"
TOLERANCE = 0.10


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_touched_classes_rank_first_with_their_bytes(version: str, tmp_path: Path) -> None:
    facts, summary, _ = trace_python_fixture(INTERPRETERS[version], FIXTURE, tmp_path)
    classes = facts["classes"]
    rows = {row["type"]: row for row in summary["python_types"]}
    copied = [row["copied_bytes"] for row in summary["python_types"]]
    assert copied == sorted(copied, reverse=True)
    touched = {classes["Alpha"]["type"], classes["Charlie"]["type"]}
    assert {row["type"] for row in summary["python_types"][:2]} == touched, summary["python_types"][
        :4
    ]
    for name in ("Alpha", "Charlie"):
        row, want = rows[classes[name]["type"]], classes[name]
        # Exact in most runs; a boundary page copied before the fork's pages were read, or
        # shared with another object's pool, moves a block or two (10%: the bar).
        assert abs(row["copied_bytes"] - want["bytes"]) <= TOLERANCE * want["bytes"], (row, want)
        assert abs(row["objects"] - want["count"]) <= TOLERANCE * want["count"], (row, want)
        assert row["by_category"].get("refcount", 0) >= (1 - TOLERANCE) * want["bytes"], row
        assert sum(row["by_category"].values()) == row["copied_bytes"]
    bravo = rows.get(classes["Bravo"]["type"], {"copied_bytes": 0})  # never touched
    assert bravo["copied_bytes"] <= 0.01 * classes["Bravo"]["bytes"], bravo
    # Large objects, through the glibc blocks found walking the heap at attach.
    large = facts["large"]
    row = rows[large["type"]]
    assert abs(row["copied_bytes"] - large["bytes"]) <= TOLERANCE * large["bytes"], (row, large)
    assert abs(row["objects"] - large["count"]) <= TOLERANCE * large["count"], (row, large)
    child = next(p for p in summary["processes"] if p["pid"] == facts["child"])
    assert [r["type"] for r in child["python_types"][:2]] == [
        r["type"] for r in summary["python_types"][:2]
    ]
    pages = summary["python_pages"]
    assert pages["objects"] * 4096 >= sum(rows[t]["copied_bytes"] for t in touched)


def test_agent_exports_copied_bytes_by_type() -> None:
    """The agent (no Python stacks) resolves the same pages: its top types are Alpha and
    Charlie with their bytes, Bravo has no series and the rest is type="other"."""
    from tests.e2e import wait_until
    from tests.helpers import COWTRACE
    from tests.kernel.streams import Lines
    from tests.kernel.test_agent import scrape
    from tests.promserver import http_get, metrics_url, promtool_check

    with python_fixture(INTERPRETERS["3.11-debian"], FIXTURE) as fixture:
        agent = subprocess.Popen(
            [*COWTRACE, "agent", "--pid", str(fixture.pid), "--metrics-addr", "127.0.0.1:0"]
            + ["--interval", "0.2", "--python-types-top", "5"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stderr = Lines(agent.stderr)
            url = metrics_url(stderr)
            stderr.wait_for(rf"tracing \S+ \(pid {fixture.pid}\)", timeout=60)  # adopted: fork now
            fixture.stdin.write("go\n")
            fixture.stdin.flush()
            facts = json.loads(fixture.stdout.readline())
            classes = facts["classes"]

            def by_type() -> dict[str, float] | None:
                found = {
                    dict(labels)["type"]: value
                    for (name, labels), value in scrape(url).items()
                    if name == "cowtrace_python_type_copied_bytes_total"
                }
                want = classes["Charlie"]["type"]
                return found if found.get(want, 0) >= classes["Charlie"]["bytes"] * 0.9 else None

            found = wait_until(by_type, 60, "Charlie's bytes in the metrics")
            for name in ("Alpha", "Charlie"):
                want = classes[name]
                assert abs(found[want["type"]] - want["bytes"]) <= TOLERANCE * want["bytes"], found
            assert classes["Bravo"]["type"] not in found
            assert "other" in found and len(found) <= 6
            checked = promtool_check(http_get(url))
            assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout
        finally:
            agent.terminate()
            agent.wait(timeout=30)
