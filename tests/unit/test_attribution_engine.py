"""The attribution engine on synthetic records: exact attributions, in timestamp order."""

from __future__ import annotations

import json

import numpy as np

from cowtrace.attribution.engine import AttributionEngine
from cowtrace.attribution.maps import ProcessMap
from cowtrace.kernel.abi import (
    ALLOC_OP_ALLOC,
    ALLOC_OP_FREE,
    ALLOC_OP_REALLOC,
)
from cowtrace.output.events import EventLog, FieldTexts
from cowtrace.output.summary import attribution_sections, exit_fields
from tests.unit.attribution_records import (
    FakeResolver,
    alloc_events,
    faults,
    snapshot,
)

P = 4096
HEAP = 0x55D000100000
ANON = 0x7F0000000000
CODE = 0x400000
PARENT, CHILD = 100, 101
COPY, REUSE, ZERO = 1, 2, 3
MS = 1_000_000


def summary_sections(eng: AttributionEngine) -> dict:
    """The summary's attribution sections, as the summary writes them from the final view."""
    view = eng.view(final=True)
    assert view is not None
    return attribution_sections(view)


def process_fields(eng: AttributionEngine, pid: int) -> dict:
    """A process' `exit_copies` and `exit_writers` in the summary."""
    view = eng.view(final=True)
    assert view is not None and view.exits is not None
    return exit_fields(view.exits.get(pid))


def engine(**kw) -> AttributionEngine:
    resolver = kw.pop("resolver", None)
    return AttributionEngine(resolver, read_proc=False, **kw)


SEED = [
    (CODE, 16 * P, "r-xp", ""),
    (HEAP, 64 * P, "rw-p", "[heap]"),
    (ANON, 16 * P, "rw-p", ""),
]
SHM = "/dev/shm/seg"


def seed(eng: AttributionEngine, pid: int = PARENT) -> None:
    """A process with code, a 64-page heap and a 16-page anonymous mapping, read at ts 3."""
    eng.maps[pid] = ProcessMap(eng.regions, [])  # known (as if read from /proc): empty
    eng.on_map_snapshots([snapshot(3, pid, SEED)])


def replaced(ts: int, pid: int, *extra: tuple[int, int, str, str]):
    """The seeded map re-read at `ts` with ANON's first page mapped MAP_FIXED to a shm
    segment (munmap then mmap), plus `extra` mappings."""
    spans = [*SEED[:2], (ANON, P, "rw-s", SHM), (ANON + P, 15 * P, "rw-p", ""), *extra]
    return snapshot(ts, pid, spans)


def regions(eng: AttributionEngine) -> list[tuple[str, int, int, int, int]]:
    return [
        (r["kind"], r["copies"], r["reuses"], r["zero_fills"], r["processes"])
        for r in summary_sections(eng)["regions"]
    ]


def test_regions_count_each_kind_exactly() -> None:
    eng = engine()
    seed(eng)
    eng.on_fault_events(
        faults(
            [
                (10, PARENT, HEAP, COPY, -1),
                (11, PARENT, HEAP + P, COPY, -1),
                (12, PARENT, HEAP + 2 * P, REUSE, -1),
                (13, PARENT, ANON, ZERO, -1),
                (14, PARENT, ANON + P, COPY, -1),
                (15, PARENT, 0x10, COPY, -1),  # in no mapping
                (16, PARENT, 0, COPY, -1),  # get_user_pages: no address, no region
            ]
        )
    )
    assert regions(eng) == [
        ("heap", 2, 1, 0, 1),
        ("anon", 1, 0, 1, 1),
        ("other", 1, 0, 0, 1),
    ]
    view = eng.view()
    assert view is not None
    assert view.copies_by_kind == {(PARENT, "heap"): 2, (PARENT, "anon"): 1, (PARENT, "other"): 1}


def test_changes_apply_in_timestamp_order_within_a_batch() -> None:
    """A map change drained with faults on both sides of it: the older fault sees the mapping
    before the change, the newer one the snapshot."""
    eng = engine()
    seed(eng)
    eng.on_map_snapshots([replaced(20, PARENT)])
    eng.on_fault_events(
        faults([(25, PARENT, ANON, COPY, -1), (15, PARENT, ANON, COPY, -1)])  # out of order
    )
    assert regions(eng) == [("anon", 1, 0, 0, 1), ("shm", 1, 0, 0, 1)]


def test_change_newer_than_the_batch_waits_for_later_faults() -> None:
    eng = engine()
    seed(eng)
    eng.on_map_snapshots([replaced(50, PARENT)])
    eng.on_fault_events(faults([(20, PARENT, ANON, COPY, -1)]))
    eng.on_fault_events(faults([(40, PARENT, ANON, COPY, -1), (60, PARENT, ANON, COPY, -1)]))
    assert regions(eng) == [("anon", 2, 0, 0, 1), ("shm", 1, 0, 0, 1)]


def test_an_address_unmapped_before_the_reread_resolves_against_the_map_before() -> None:
    """A mapping written and then unmapped between the change record and the re-read is not in
    the snapshot: its copies after the change still find it in the map before."""
    eng = engine()
    seed(eng)
    gone = [*SEED[:2]]  # ANON unmapped
    eng.on_map_snapshots([snapshot(20, PARENT, gone)])
    eng.on_fault_events(faults([(25, PARENT, ANON + 3 * P, COPY, -1)]))
    assert regions(eng) == [("anon", 1, 0, 0, 1)]


def test_fork_inherits_the_map_as_it_stood_and_exec_resets_it() -> None:
    eng = engine()
    seed(eng)
    eng.on_fork(10, PARENT, CHILD)
    eng.on_exec(40, PARENT)
    late = (ANON + 64 * P, P, "rw-p", "")
    eng.on_map_snapshots(
        [
            replaced(20, PARENT, late),  # the parent replaced ANON's first page
            snapshot(5, PARENT, [*SEED, late]),  # before the fork: the child has it too
        ]
    )
    eng.on_fault_events(
        faults(
            [
                (30, CHILD, ANON, COPY, -1),  # the child still maps the anonymous page
                (31, CHILD, ANON + 64 * P, COPY, -1),
                (32, PARENT, ANON, COPY, -1),  # the parent's is the shm segment now
                (45, PARENT, HEAP, COPY, -1),  # after exec: the old heap is unknown
            ]
        )
    )
    assert regions(eng) == [("anon", 2, 0, 0, 1), ("other", 1, 0, 0, 1), ("shm", 1, 0, 0, 1)]


def test_blocks_small_and_large_and_fork_inheritance() -> None:
    """A page of 64 small blocks and a 16-page block: counts, largest, pages copied."""
    resolver = FakeResolver({1: [CODE + 0x10], 2: [CODE + 0x20, CODE + 0x30]})
    eng = engine(resolver=resolver)
    seed(eng)
    rows = [(4, PARENT, ALLOC_OP_ALLOC, HEAP + 16 + 64 * i, 48, 0, 1) for i in range(64)]
    big = HEAP + 8 * P + 16
    rows.append((5, PARENT, ALLOC_OP_ALLOC, big, 16 * P, 0, 2))
    rows.append((20, PARENT, ALLOC_OP_FREE, big, 0, 0, -1))  # after the fork: child keeps it
    eng.on_alloc_events(alloc_events(rows))
    eng.on_fork(10, PARENT, CHILD)
    eng.on_fault_events(
        faults(
            [
                (30, CHILD, HEAP, COPY, -1),  # the page of small blocks
                (31, CHILD, HEAP + 9 * P, COPY, -1),
                (32, CHILD, HEAP + 10 * P, COPY, -1),
                (33, CHILD, HEAP + 24 * P, COPY, -1),  # the big block's 17th page (16 bytes)
                (34, PARENT, HEAP + 9 * P, COPY, -1),  # freed in the parent: no block
                (35, PARENT, HEAP + 9 * P, COPY, -1),  # the same page again
            ]
        )
    )
    sections = summary_sections(eng)
    allocations = {tuple(a["site"]): a for a in sections["allocations"]}
    large = allocations[("f_400020 (prog)", "f_400030 (prog)")]
    assert (large["copies"], large["blocks"], large["block_bytes"]) == (3, 1, 16 * P)
    assert large["largest"] == [{"addr": big, "size": 16 * P, "copied_pages": 3}]
    small = allocations[("f_400010 (prog)",)]
    # the page [HEAP, HEAP + P) overlaps the 64 blocks at HEAP + 16 + 64 i (all of them)
    assert (small["copies"], small["blocks"], small["block_bytes"]) == (1, 64, 64 * 48)
    assert small["largest"][0] == {"addr": HEAP + 16, "size": 48, "copied_pages": 1}
    assert small["origin"] == "malloc" and small["allocator"] == "glibc"
    assert small["copied_bytes"] == P


def test_realloc_moves_a_block() -> None:
    eng = engine()
    seed(eng)
    eng.on_alloc_events(
        alloc_events(
            [
                (4, PARENT, ALLOC_OP_ALLOC, HEAP + 16, 100, 0, -1),
                (5, PARENT, ALLOC_OP_REALLOC, HEAP + 2 * P + 16, 3 * P, HEAP + 16, -1),
            ]
        )
    )
    eng.on_fault_events(faults([(10, PARENT, HEAP, COPY, -1), (11, PARENT, HEAP + 3 * P, 1, -1)]))
    (alloc,) = summary_sections(eng)["allocations"]
    assert alloc["largest"] == [{"addr": HEAP + 2 * P + 16, "size": 3 * P, "copied_pages": 1}]
    assert alloc["copies"] == 1


def test_writers_resolved_once_and_truncated_at_a_non_code_frame() -> None:
    garbage = 0x1234  # in no executable mapping: the frame-pointer walk went astray
    resolver = FakeResolver({7: [CODE + 0x100, CODE + 0x200, garbage, CODE + 0x300], 8: [CODE]})
    eng = engine(resolver=resolver)
    seed(eng)
    eng.on_fork(5, PARENT, CHILD)
    eng.on_fault_events(
        faults(
            [(10 + i, CHILD, HEAP + i * P, COPY, 7) for i in range(5)]
            + [(20, PARENT, HEAP, COPY, 7), (21, PARENT, ANON, COPY, 8), (22, PARENT, ANON, 2, 9)]
        )
    )
    writers = summary_sections(eng)["writers"]
    assert writers == [
        {
            "frames": ["f_400100 (prog)", "f_400200 (prog)"],
            "copies": 6,
            "copied_bytes": 6 * P,
            "processes": 2,
            "truncated": True,
        },
        {
            "frames": ["f_400000 (prog)"],
            "copies": 1,
            "copied_bytes": P,
            "processes": 1,
            "truncated": False,
        },
    ]
    summary_sections(eng)
    assert resolver.lookups == 2  # once per stack id; reuses (id 9) are not writers


def test_unknown_map_cuts_the_stack_at_a_frame_no_object_holds() -> None:
    """A process whose map was never read (it exited first): frames are believed, except a
    return address that no object the symbolizer knows holds ("[unknown]", no module); the
    leaf, the faulting instruction itself, is always kept."""

    class Unmapped(FakeResolver):
        def symbolize(self, pid: int, addr: int) -> str:
            return "[unknown]" if addr < CODE else super().symbolize(pid, addr)

    resolver = Unmapped({7: [CODE + 0x100, 0x1234, CODE + 0x300], 8: [0x10, CODE]})
    eng = engine(resolver=resolver)  # no map for PARENT: unknown
    eng.on_fault_events(faults([(10, PARENT, HEAP, COPY, 7), (11, PARENT, HEAP + P, COPY, 8)]))
    frames = {tuple(w["frames"]): w["truncated"] for w in summary_sections(eng)["writers"]}
    assert frames == {("f_400100 (prog)",): True, ("[unknown]", "f_400000 (prog)"): False}


def test_exit_window_counts_only_the_last_moments() -> None:
    resolver = FakeResolver({3: [CODE + 0x40]})
    eng = engine(resolver=resolver, exit_window_s=0.5)
    seed(eng)
    exit_ts = 2000 * MS
    eng.on_fault_events(
        faults(
            [
                (exit_ts - 600 * MS, PARENT, HEAP, COPY, 3),  # too early
                (exit_ts - 400 * MS, PARENT, HEAP + P, COPY, 3),
                (exit_ts - 300 * MS, PARENT, HEAP + 2 * P, REUSE, 3),  # not a copy
            ]
        )
    )
    eng.on_exit(exit_ts, PARENT)
    # drained after the exit record arrived: still inside the window
    eng.on_fault_events(faults([(exit_ts - 1 * MS, PARENT, HEAP + 3 * P, COPY, -1)]))
    fields = process_fields(eng, PARENT)
    assert fields == {
        "exit_copies": 2,
        "exit_writers": [{"frames": ["f_400040 (prog)"], "copies": 1}, {"frames": [], "copies": 1}],
    }
    view = eng.view()
    assert view is not None and view.exit_copies == {PARENT: 2}
    assert process_fields(eng, CHILD) == {"exit_copies": 0, "exit_writers": []}


def test_exit_writers_merge_stacks_with_the_same_frames() -> None:
    """Two stack ids, one cut short by a frame in no executable mapping, name the same
    function: one exit writer, not two entries with equal frames."""
    resolver = FakeResolver({3: [CODE + 0x40], 4: [CODE + 0x40, 0x10]})
    eng = engine(resolver=resolver, exit_window_s=0.5)
    seed(eng)
    eng.on_fault_events(
        faults(
            [
                (100 * MS, PARENT, HEAP, COPY, 3),
                (101 * MS, PARENT, HEAP + P, COPY, 4),
                (102 * MS, PARENT, HEAP + 2 * P, COPY, 4),
            ]
        )
    )
    eng.on_exit(200 * MS, PARENT)
    assert process_fields(eng, PARENT) == {
        "exit_copies": 3,
        "exit_writers": [{"frames": ["f_400040 (prog)"], "copies": 3}],
    }
    ((stack, copies),) = eng.exit_writers(PARENT)
    assert stack.truncated and copies == 3


def test_summary_schema() -> None:
    eng = engine(resolver=FakeResolver({1: [CODE]}))
    seed(eng)
    eng.on_alloc_events(alloc_events([(4, PARENT, ALLOC_OP_ALLOC, HEAP + 16, 64, 0, 1)]))
    eng.on_fault_events(faults([(10, PARENT, HEAP, COPY, 1)]))
    sections = json.loads(json.dumps(summary_sections(eng)))
    assert set(sections) == {"regions", "allocations", "writers"}
    assert set(sections["regions"][0]) == {
        "kind", "name", "section", "copies", "copied_bytes", "reuses", "zero_fills", "processes"
    }  # fmt: skip
    assert set(sections["allocations"][0]) == {
        "site", "origin", "allocator", "blocks", "block_bytes", "copies", "copied_bytes", "largest"
    }  # fmt: skip
    assert set(sections["allocations"][0]["largest"][0]) == {"addr", "size", "copied_pages"}
    assert set(sections["writers"][0]) == {
        "frames", "copies", "copied_bytes", "processes", "truncated"
    }  # fmt: skip
    assert set(process_fields(eng, PARENT)) == {"exit_copies", "exit_writers"}


def test_event_fields_in_the_log(tmp_path) -> None:
    eng = engine(resolver=FakeResolver({1: [CODE + 8]}), event_fields=True)
    seed(eng)
    eng.on_alloc_events(alloc_events([(4, PARENT, ALLOC_OP_ALLOC, HEAP + 16, 64, 0, -1)]))
    records = faults(
        [(12, PARENT, ANON + P, REUSE, -1), (10, PARENT, HEAP, COPY, 1), (11, PARENT, 0, COPY, -1)]
    )
    extra = eng.on_fault_events(records)
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path))
    log.write(records, extra)
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    picked = [
        {k: line[k] for k in ("mapping", "path", "offset", "alloc", "stack")} for line in lines
    ]
    assert picked == [
        {"mapping": "anon", "path": None, "offset": None, "alloc": None, "stack": None},
        {
            "mapping": "heap",
            "path": None,
            "offset": None,
            "alloc": {"addr": HEAP + 16, "size": 64, "origin": "malloc"},
            "stack": ["f_400008 (prog)"],
        },
        {"mapping": None, "path": None, "offset": None, "alloc": None, "stack": None},
    ]


def test_no_data_no_view() -> None:
    eng = engine()
    assert eng.view() is None
    assert summary_sections(eng) == {"regions": [], "allocations": [], "writers": []}


def test_blocks_are_seen_as_of_each_copy() -> None:
    """Allocator calls drained with the faults: a copy inside free() (before it returned)
    lands in the freed block, one before a malloc returned does not see the new block."""
    eng = engine()
    seed(eng)
    eng.on_alloc_events(
        alloc_events(
            [
                (4, PARENT, ALLOC_OP_ALLOC, HEAP + 16, 2000, 0, -1),
                (20, PARENT, ALLOC_OP_FREE, HEAP + 16, 0, 0, -1),
                (30, PARENT, ALLOC_OP_ALLOC, HEAP + 16, 100, 0, -1),  # the address reused
                (40, PARENT, ALLOC_OP_ALLOC, HEAP + P + 16, 300, 0, -1),
            ]
        )
    )
    eng.event_fields = True
    extras = eng.on_fault_events(
        faults(
            [
                (10, PARENT, HEAP, COPY, -1),  # the 2000-byte block
                (19, PARENT, HEAP, COPY, -1),  # still the 2000-byte block (free not returned)
                (25, PARENT, HEAP, COPY, -1),  # between free and malloc: nothing
                (35, PARENT, HEAP, COPY, -1),  # the 100-byte block
                (35, PARENT, HEAP + P, COPY, -1),  # before the 300-byte block existed
                (45, PARENT, HEAP + P, COPY, -1),  # the 300-byte block
            ]
        )
    )
    assert extras is not None
    sizes = [json.loads("{" + e[2:] + "}")["alloc"] for e in FieldTexts().attribution(extras)]
    assert [s and s["size"] for s in sizes] == [2000, 2000, None, 100, None, 300]


def test_largest_overlap_wins_across_tables() -> None:
    """Recovered (base table) and new (side table) blocks on one page: the one covering most
    of the page is the page's block; every overlapping block is counted."""
    from cowtrace.attribution.allocs import Site

    eng = engine(event_fields=True)
    seed(eng)
    table = eng.changes.table(PARENT)
    site = eng.blocks.site_id(Site("recovered", "glibc", -1, 0, PARENT))
    addrs = np.array([HEAP + 16, HEAP + 3000], np.uint64)
    sizes = np.array([1000, 600], np.uint64)
    table.add_many(addrs, eng.blocks.add_many(addrs, sizes, site))
    eng.on_alloc_events(alloc_events([(4, PARENT, ALLOC_OP_ALLOC, HEAP + 1100, 1800, 0, -1)]))
    fields = eng.on_fault_events(faults([(10, PARENT, HEAP, COPY, -1)]))
    assert fields is not None
    (extra,) = FieldTexts().attribution(fields)
    assert json.loads("{" + extra[2:] + "}")["alloc"] == {
        "addr": HEAP + 1100,
        "size": 1800,
        "origin": "malloc",
    }
    allocations = {a["origin"]: a for a in summary_sections(eng)["allocations"]}
    assert allocations["malloc"]["copies"] == 1 and allocations["malloc"]["blocks"] == 1
    assert allocations["recovered"]["copies"] == 0 and allocations["recovered"]["blocks"] == 2


def test_fork_shares_the_block_table() -> None:
    """Workers of a master with a big recovered heap do not each copy its table."""
    from cowtrace.attribution.allocs import Site

    eng = engine()
    seed(eng)
    table = eng.changes.table(PARENT)
    site = eng.blocks.site_id(Site("recovered", "glibc", -1, 0, PARENT))
    addrs = HEAP + 16 + 64 * np.arange(1000, dtype=np.uint64)
    table.add_many(addrs, eng.blocks.add_many(addrs, np.full(1000, 48, np.uint64), site))
    for child in range(200, 232):
        eng.on_fork(10, PARENT, child)
    eng.on_alloc_events(alloc_events([(20, 200, ALLOC_OP_FREE, HEAP + 16, 0, 0, -1)]))
    eng.flush()
    assert all(eng.tables[c]._base is table._base for c in range(200, 232))
    assert len(eng.tables[200].live()[0]) == 999 and len(eng.tables[201].live()[0]) == 1000


def test_queue_stays_bounded_without_faults(monkeypatch) -> None:
    import cowtrace.attribution.changes as changes_module

    monkeypatch.setattr(changes_module, "QUEUE_LIMIT", 100)
    eng = engine()
    seed(eng)
    second = 1_000_000_000
    rows = [
        (i * second // 100, PARENT, ALLOC_OP_ALLOC, HEAP + 64 * i, 32, 0, -1) for i in range(300)
    ]
    eng.on_alloc_events(alloc_events(rows))
    # everything older than a second before the newest call was applied
    assert eng.changes._pending_allocs == 100  # ts 2.0 s .. 2.99 s
    assert len(eng.tables[PARENT].live()[0]) == 200


def test_tally_processes_when_a_pid_flag_array_outgrew_the_counts() -> None:
    """A pid's flags grow by doubling on their own: 95 ids, then 96, left them longer than the
    counts (a real run crashed here)."""
    from cowtrace.attribution.tally import IdTally

    tally = IdTally()
    tally.add(1, np.arange(95))
    tally.add(2, np.arange(96))
    tally.add(1, np.array([96]))
    processes = tally.processes()
    assert len(processes) == len(tally.counts)
    assert processes[:95].tolist() == [2] * 95
    assert processes[95:97].tolist() == [1, 1]


def test_untracked_allocations_match_no_block_from_then_on() -> None:
    """A process whose probes came off (their cost budget): its copies before that match its
    blocks; after it, and in a child it forks later, nothing (the table is unknown)."""
    resolver = FakeResolver({1: [CODE + 0x10]})
    eng = engine(resolver=resolver)
    seed(eng)
    eng.on_alloc_events(alloc_events([(4, PARENT, ALLOC_OP_ALLOC, HEAP + 16, 8 * P, 0, 1)]))
    eng.allocations_untracked(20, PARENT)
    eng.on_fork(30, PARENT, CHILD)
    eng.on_fault_events(
        faults(
            [
                (10, PARENT, HEAP + P, COPY, -1),  # before: the block
                (25, PARENT, HEAP + 2 * P, COPY, -1),  # after: none
                (40, CHILD, HEAP + 3 * P, COPY, -1),  # forked after: none
            ]
        )
    )
    (site,) = summary_sections(eng)["allocations"]
    assert (site["copies"], site["blocks"]) == (1, 1)


def test_tally_retire_keeps_the_process_counts() -> None:
    from cowtrace.attribution.tally import IdTally

    tally = IdTally()
    tally.add(1, np.array([3, 3, 40000]))
    tally.add(2, np.array([3]))
    before = tally.processes().tolist()
    assert tally.retire(1).tolist() == [3, 40000]
    assert tally.retire(1).tolist() == []  # twice: nothing more
    assert list(tally.seen) == [2]
    assert tally.processes().tolist() == before
    assert before[3] == 2 and before[40000] == 1 and sum(before) == 3


def test_forget_drops_every_per_pid_table_and_keeps_the_aggregates() -> None:
    """The agent forgets each worker after its grace period: nothing of it may stay behind
    (a week of churn is millions of pids), while the totals it contributed stay."""
    resolver = FakeResolver({7: [CODE + 0x100], 8: [CODE + 0x100], 9: [CODE + 0x200]})
    eng = engine(resolver=resolver)
    seed(eng)
    for child, ts in ((CHILD, 5), (CHILD + 1, 6)):
        eng.on_fork(ts, PARENT, child)
    eng.on_fault_events(
        faults(
            [(10, CHILD, HEAP, COPY, 7), (11, CHILD, ANON, COPY, 8), (12, CHILD, HEAP + P, COPY, 9)]
            + [(13, CHILD + 1, HEAP + 2 * P, COPY, 8), (14, PARENT, HEAP + 3 * P, COPY, 9)]
        )
    )
    eng.on_exit(20, CHILD)
    before = summary_sections(eng)
    for pid in (CHILD, CHILD + 1):
        eng.forget(pid)
    assert summary_sections(eng) == before  # copies and processes per row unchanged
    assert set(eng.maps) == set(eng.tables) == {PARENT}
    assert set(eng._exits.recent) <= {PARENT}
    assert set(eng._writers.writers.seen) == set(eng._regions.pids.seen) == {PARENT}
    view = eng.view()
    assert view is not None
    assert view.copies_by_kind == {(PARENT, "heap"): 1}
    assert view.exit_copies == {}


def test_released_stack_ids_keep_their_writers_and_are_resolved_afresh() -> None:
    """Stack ids that only forgotten processes used are released (the agent deletes them from
    the kernel's stack maps, which would fill up); their copies stay with their frames, and an
    id the kernel later gives to another stack names that stack."""
    resolver = FakeResolver({7: [CODE + 0x100], 8: [CODE + 0x200], 9: [CODE + 0x100]})
    eng = engine(resolver=resolver)
    seed(eng)
    eng.on_fork(5, PARENT, CHILD)
    eng.on_fault_events(
        faults(
            [(10, CHILD, HEAP, COPY, 7), (11, CHILD, HEAP + P, COPY, 7)]
            + [(12, CHILD, ANON, REUSE, 8), (13, PARENT, HEAP + 2 * P, COPY, 9)]
        )
    )
    before = summary_sections(eng)["writers"]
    assert eng.release_stacks() == []  # both still kept
    eng.forget(CHILD)
    assert eng.release_stacks() == [7, 8]  # 9 is the parent's
    assert eng.release_stacks() == []
    assert summary_sections(eng)["writers"] == before  # 2 + 1 copies, 2 processes, merged
    resolver.stacks[7] = [CODE + 0x300]  # the id now names another stack
    eng.on_fault_events(faults([(20, PARENT, HEAP + 3 * P, COPY, 7)]))
    writers = {
        tuple(w["frames"]): (w["copies"], w["processes"]) for w in summary_sections(eng)["writers"]
    }
    assert writers == {("f_400100 (prog)",): (3, 2), ("f_400300 (prog)",): (1, 1)}


def test_modules_of_unnamed_frames_in_summary_and_log(tmp_path) -> None:
    """A resolver that named a frame `module+0xOFFSET (module)` lists the module: the summary
    has "modules", and the event log gives it once, on the first lines of a stack naming it."""
    info = {"path": "/lib/libx.so", "build_id": "ab" * 20, "loads": [[0, 0, 4096]]}

    class Unnamed(FakeResolver):
        def symbolize(self, pid: int, addr: int) -> str:
            return "libx.so+0x10 (libx.so)"

        def modules(self) -> dict:
            return {"libx.so": info}

    eng = engine(resolver=Unnamed({1: [CODE + 8], 2: [CODE + 16]}), event_fields=True)
    seed(eng)
    records = faults(
        [(10, PARENT, HEAP, COPY, 1), (11, PARENT, HEAP + P, COPY, 1), (12, PARENT, HEAP, COPY, 2)]
    )
    extras = eng.on_fault_events(records)
    assert extras is not None
    lines = [json.loads("{" + e[2:] + "}") for e in FieldTexts().attribution(extras)]
    assert [line.get("modules") for line in lines] == [{"libx.so": info}, {"libx.so": info}, None]
    assert [line["stack"] for line in lines] == [["libx.so+0x10 (libx.so)"]] * 3
    assert summary_sections(eng)["modules"] == {"libx.so": info}
