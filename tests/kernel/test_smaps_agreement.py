"""cowtrace's copies against the kernel's own page bookkeeping: Private_Dirty in smaps.

When a process copies a page it shared with its parent, the new page is mapped by it alone:
its Private_Dirty grows by one page per copy (reuses do not move it: the reused page was
already mapped by the writer alone).  The fixtures stop at a mark just before their first
measured write and at a hold point just before they exit, and the oracle reads smaps at both,
while `cowtrace run` traces the same run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowtrace.host import smaps
from tests.fixtures.conftest_helpers import load_oracle
from tests.helpers import COWTRACE, read_jsonl, run_args

PAGE = 4096
# Pages the process dirties outside its buffers between mark and hold (its stack, libc's
# stdout buffer and the like) or that the kernel accounts differently (page tables are not
# in smaps, but a neighbouring VMA may merge): a small constant.
ANON_SLACK_PAGES = 32

oracle = load_oracle()


def _anon_private_dirty(mappings: list[smaps.Mapping]) -> int:
    return sum(m.private_dirty for m in mappings if m.is_anonymous)


def _buffer_private_dirty(mappings: list[smaps.Mapping], start: int, end: int) -> int:
    return sum(m.private_dirty for m in mappings if m.overlaps(start, end))


@pytest.mark.parametrize("pages", [1024, 8192])
def test_child_copies_equal_its_private_dirty_growth(
    pages: int, tmp_path: Path, fixture_binaries
) -> None:
    """The parent dirties N pages and forks; the child writes them all, while the parent still
    maps them (it waits for the child): each write is a copy, and each copy is a page that
    only the child maps.  (Where siblings also copy or exit, a process' Private_Dirty grows
    by the pages *they* released too: that is smaps counting the other side.)"""
    name, args = "child_writes", (str(pages),)
    binary = fixture_binaries(name)
    summary_path = tmp_path / "summary.json"
    events_path = tmp_path / "events.jsonl"
    prefix = (*COWTRACE, *run_args(summary_path, events_path))
    run = oracle.run_under_oracle(name, binary, args, hold=True, command_prefix=prefix)
    summary = json.loads(summary_path.read_text())
    events = read_jsonl(events_path)
    by_pid = {p["pid"]: p for p in summary["processes"]}
    facts = run.facts
    checked = 0
    for pid, result in run.processes.items():
        if by_pid[pid]["copies"] < pages or not (result.smaps_at_marks and result.smaps_at_hold):
            continue  # the parent: it writes nothing shared while the child lives
        label = f"{name}/{result.name} (pid {pid})"
        mark, hold = result.smaps_at_marks[0], result.smaps_at_hold
        # Per buffer, exactly: cowtrace's copies in the buffer == its Private_Dirty growth.
        # Buffers sharing one VMA are summed, since smaps cannot tell them apart.
        vmas: dict[tuple[int, ...], int] = {}
        for buffer in facts.buffers.values():
            key = tuple(m.start for m in hold if m.overlaps(buffer.start, buffer.end))
            copies = sum(
                1
                for e in events
                if e["pid"] == pid
                and e["kind"] == "copy"
                and e["addr"] is not None
                and buffer.start <= e["addr"] < buffer.end
            )
            vmas[key] = vmas.get(key, 0) + copies
        for key, copies in vmas.items():
            ranges = [(m.start, m.end) for m in hold if m.start in key]
            grown = sum(
                _buffer_private_dirty(hold, s, e) - _buffer_private_dirty(mark, s, e)
                for s, e in ranges
            )
            assert grown == copies * PAGE, f"{label}: VMA {key} grew {grown // PAGE} pages"
        # Whole process: anonymous Private_Dirty growth == its copies, within a small constant.
        grown_pages = (_anon_private_dirty(hold) - _anon_private_dirty(mark)) // PAGE
        copies = by_pid[pid]["copies"]
        assert abs(grown_pages - copies) <= ANON_SLACK_PAGES, (
            f"{label}: anon Private_Dirty grew {grown_pages} pages, cowtrace counted {copies}"
        )
        checked += 1
    assert checked == 1, "the child did not reach both its mark and its hold point"
