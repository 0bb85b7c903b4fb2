"""The acceptance tests of issue 3 (attribution), end to end through the CLI, on the real kernel.

Each test runs one C fixture whose answer is derived from the addresses it prints, under
`cowtrace run` or `cowtrace PID`, and checks the --json summary's attribution sections (and
the --events fields) against that answer:

1. alloc_writes: one malloc(64 MiB) block and 4000 small ones, allocated in named functions,
   written by the child in named functions: allocation sites, writer stacks, region kinds.
2. attach_heap: blocks allocated before cowtrace attaches (no malloc uprobes) are recovered
   by walking glibc's heap, with their usable sizes, and the child's copies land in them.
3. free_on_exit: the seed case of exit-time copies: a child that free()s its inherited heap
   before _exit() pays a copy per page it frees into; its sibling without the frees pays none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e import trace_attached
from tests.fixtures.conftest_helpers import load_build
from tests.helpers import read_jsonl, run_args, run_cowtrace

build = load_build()
PAGE = 4096
MIB = 1 << 20
# glibc's free path: the writes of a free() are made in one of these (no frame pointers in
# libc, so the stack is often this frame alone).
FREE_FUNCTIONS = ("free", "__libc_free", "cfree", "_int_free", "tcache_put")


def _function(frame: str) -> str:
    """'write_big (alloc_writes)' -> 'write_big'."""
    return frame.rsplit(" (", 1)[0]


def _other(facts: Any, key: str) -> dict:
    (found,) = [line[key] for line in facts.other if key in line]
    return found


def _alloc_line(facts: Any, name: str) -> dict:
    """The fixture's {"alloc": {...}} line of the allocator call it named `name`."""
    (found,) = [line["alloc"] for line in facts.other if line.get("alloc", {}).get("name") == name]
    return found


def _expect(facts: Any, pid: int, buffer: str) -> int:
    (expect,) = [e for e in facts.expects if e.pid == pid and e.buffer == buffer]
    return expect.copies


def _site(summary: dict, function: str) -> dict:
    """The allocation site whose innermost frame is `function` (exactly one)."""
    (site,) = [
        a for a in summary["allocations"] if a["site"] and _function(a["site"][0]) == function
    ]
    return site


def _writer_copies(summary: dict, function: str) -> int:
    """Copies of every writer stack whose innermost frame is `function`."""
    return sum(
        w["copies"]
        for w in summary["writers"]
        if w["frames"] and _function(w["frames"][0]) == function
    )


def _region(summary: dict, kind: str, name: str) -> dict:
    (region,) = [r for r in summary["regions"] if r["kind"] == kind and r["name"] == name]
    return region


def _copies_in(events: list[dict], pid: int, lo: int, hi: int) -> list[dict]:
    return [
        e
        for e in events
        if e["pid"] == pid and e["kind"] == "copy" and e["addr"] and lo <= e["addr"] < hi
    ]


def _run(binary: Path, args: list[str], tmp_path: Path) -> tuple[Any, dict, list[dict]]:
    """`cowtrace run --quiet --json S --events E -- binary args`: facts, summary, events."""
    summary_path, events_path = tmp_path / "s.json", tmp_path / "e.jsonl"
    result = run_cowtrace(run_args(summary_path, events_path, str(binary), *args), timeout=90)
    assert result.returncode == 0, result.stderr
    facts = build.parse_lines(result.stdout)
    return facts, json.loads(summary_path.read_text()), read_jsonl(events_path)


# ---- 1. the 64 MiB block and the small blocks, under `run` -------------------------------------
def _small_site_pages(facts: Any) -> tuple[int, int]:
    """Of the pages the small blocks span, how many count for make_small's site and how many
    for exercise_allocator's (the realloc'd 5000-byte block may share the last page).

    A copy counts for the block covering most of its page, ties to the lower address; the live
    blocks on those pages are the small blocks (evenly spaced, checked), the realloc'd block
    and, before the first small block, make_small's own pointer table (same site)."""
    small = _other(facts, "small_blocks")
    count, size, first, last = small["count"], small["size"], small["first"], small["last"]
    stride, rest = divmod(last - first, count - 1)
    assert rest == 0 and stride >= size, small
    realloc = _alloc_line(facts, "realloc")
    r_lo, r_hi = realloc["addr"], realloc["addr"] + realloc["size"]
    buffer = facts.buffers["small"]
    mine = theirs = 0
    for page in range(buffer.start, buffer.end, PAGE):
        near = range(
            max(0, (page - first - size) // stride), min(count, (page + PAGE - first) // stride + 1)
        )
        best_small = max(
            max(0, min(first + i * stride + size, page + PAGE) - max(first + i * stride, page))
            for i in near
        )
        overlap_r = max(0, min(r_hi, page + PAGE) - max(r_lo, page))
        if overlap_r > best_small:
            theirs += 1
        else:
            mine += 1
    return mine, theirs


def test_big_and_small_blocks_are_attributed_to_their_sites_and_writers(fixture_binaries, tmp_path):
    facts, summary, events = _run(fixture_binaries("alloc_writes"), ["64", "4000"], tmp_path)
    child = facts.pid_of("child")
    big, small = facts.buffers["big"], facts.buffers["small"]
    big_pages, small_pages = _expect(facts, child, "big"), _expect(facts, child, "small")
    assert (big_pages, small_pages) == (big.pages, small.pages)
    big_alloc = _alloc_line(facts, "big")
    assert big_alloc["size"] == 64 * MIB

    # Allocation sites: the stack of each has its allocating function innermost, then main.
    site = _site(summary, "make_big")
    assert any(_function(f) == "main" for f in site["site"]), site
    assert (site["origin"], site["allocator"]) == ("malloc", "glibc")
    assert (site["copies"], site["copied_bytes"]) == (big_pages, big_pages * PAGE)
    assert (site["blocks"], site["block_bytes"]) == (1, 64 * MIB)
    assert site["largest"] == [
        {"addr": big_alloc["addr"], "size": 64 * MIB, "copied_pages": big_pages}
    ]
    mine, theirs = _small_site_pages(facts)
    assert mine + theirs == small_pages
    site = _site(summary, "make_small")
    assert site["copies"] == mine, site
    # every small block had a page copied, plus make_small's pointer table (first page)
    assert site["blocks"] == _other(facts, "small_blocks")["count"] + 1
    assert _site(summary, "exercise_allocator")["copies"] == theirs

    # Writers: the writing functions, with exactly the copies of their buffers.
    assert _writer_copies(summary, "write_big") == big_pages
    assert _writer_copies(summary, "write_small") == small_pages

    # Regions: the small blocks are in [heap] (and nothing else copied there); the big block
    # is glibc's own anonymous mmap.
    heap = _region(summary, "heap", "[heap]")
    assert (heap["copies"], heap["processes"]) == (small_pages, 1)
    anon_copies = [e for e in events if e["kind"] == "copy" and e["mapping"] == "anon"]
    assert _region(summary, "anon", "")["copies"] == len(anon_copies) >= big_pages

    # --events: every copy in the big block carries the block, its mapping and its writer.
    in_big = _copies_in(events, child, big.start, big.end)
    assert len(in_big) == big_pages
    for event in in_big:
        assert event["alloc"] == {"addr": big_alloc["addr"], "size": 64 * MIB, "origin": "malloc"}
        assert event["mapping"] == "anon" and _function(event["stack"][0]) == "write_big", event
    in_small = _copies_in(events, child, small.start, small.end)
    assert len(in_small) == small_pages
    assert all(e["mapping"] == "heap" and e["path"] is None for e in in_small)
    assert all(_function(e["stack"][0]) == "write_small" for e in in_small)


# ---- 2. blocks that predate the attach ---------------------------------------------------------
def test_attach_attributes_copies_to_recovered_heap_chunks(fixture_binaries, tmp_path):
    _, facts, summary, events = trace_attached(
        [str(fixture_binaries("attach_heap")), "4", "2000"], tmp_path
    )
    child = facts.pid_of("child")
    big, small = facts.buffers["big"], facts.buffers["small"]
    big_pages, small_pages = _expect(facts, child, "big"), _expect(facts, child, "small")
    block, blocks = _other(facts, "block"), _other(facts, "small_blocks")
    assert summary["processes"][0]["adopted"] is True

    # One recovered "site" (no stack): the big mmapped chunk and the small chunks, with the
    # usable sizes glibc reports (malloc_usable_size), not the requested ones.
    (site,) = [a for a in summary["allocations"] if a["origin"] == "recovered"]
    assert (site["site"], site["allocator"]) == ([], "glibc")
    assert site["copies"] == big_pages + small_pages
    assert site["blocks"] == 1 + blocks["count"]  # the tcache is bookkeeping, not a block
    assert site["block_bytes"] == block["usable"] + blocks["count"] * blocks["usable"]
    assert site["largest"][0] == {
        "addr": block["addr"],
        "size": block["usable"],
        "copied_pages": big_pages,
    }
    assert {b["size"] for b in site["largest"][1:]} == {blocks["usable"]}
    assert not [a for a in summary["allocations"] if a["origin"] != "recovered"]
    heap = _region(summary, "heap", "[heap]")
    assert (heap["copies"], heap["processes"]) == (small_pages, 1)

    in_big = _copies_in(events, child, big.start, big.end)
    assert len(in_big) == big_pages
    expected = {"addr": block["addr"], "size": block["usable"], "origin": "recovered"}
    assert all(e["alloc"] == expected and e["mapping"] == "anon" for e in in_big)
    in_small = _copies_in(events, child, small.start, small.end)
    assert len(in_small) == small_pages
    starts = {blocks["first"] + i * blocks["stride"] for i in range(blocks["count"])}
    for event in in_small:
        alloc = event["alloc"]
        assert alloc["origin"] == "recovered" and alloc["size"] == blocks["usable"], event
        assert alloc["addr"] in starts and event["mapping"] == "heap", event


# ---- 3. exit-time copies: free() before _exit() ------------------------------------------------
def test_freeing_the_inherited_heap_before_exit_costs_a_copy_per_page(fixture_binaries, tmp_path):
    facts, summary, events = _run(fixture_binaries("free_on_exit"), [], tmp_path)
    freer, keeper = facts.pid_of("freer"), facts.pid_of("keeper")
    free_pages = _other(facts, "free_pages")
    assert 990 <= free_pages == _expect(facts, freer, "heap") <= 1010  # "about 1000 pages"
    processes = {p["pid"]: p for p in summary["processes"]}

    # The freer: one exit-time copy per heap page free() wrote into, plus one page of libc's
    # .data: main_arena's fastbin heads, first written since the fork by the first free that
    # goes to a fastbin (glibc's fork resets the arena locks only in multi-threaded
    # processes).  Nothing else: its fork-time copies are 700 ms older than its exit.
    exit_copies = processes[freer]["exit_copies"]
    assert exit_copies == free_pages + 1
    writers = processes[freer]["exit_writers"]
    assert sum(w["copies"] for w in writers) == exit_copies
    for writer in writers:
        assert writer["frames"] and _function(writer["frames"][0]) in FREE_FUNCTIONS, writer
    assert len({tuple(w["frames"]) for w in writers}) == len(writers)  # merged by frames

    # The keeper, the same child without the frees: no exit-time copies at all.
    assert (processes[keeper]["exit_copies"], processes[keeper]["exit_writers"]) == (0, [])

    # [heap]: the freer's pages and nobody else's; libc's .data holds the extra page.
    heap = _region(summary, "heap", "[heap]")
    assert (heap["copies"], heap["processes"]) == (free_pages, 1)
    mine = [e for e in events if e["pid"] == freer and e["kind"] == "copy"]
    by_free = [e for e in mine if e["stack"] and _function(e["stack"][0]) in FREE_FUNCTIONS]
    assert len([e for e in by_free if e["mapping"] == "heap"]) == free_pages
    (extra,) = [e for e in by_free if e["mapping"] != "heap"]
    assert extra["mapping"] == "file" and extra["path"].endswith("/libc.so.6"), extra
    assert not [e for e in events if e["pid"] == keeper and e["mapping"] == "heap"]
