"""The flame tree and its layout: which bytes stand on which path (see flame.py's docstring)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowtrace.report.flame import (
    NATIVE,
    NO_NATIVE,
    NO_STACK,
    PYTHON,
    SYNTHETIC,
    TRUNCATED,
    FlameNode,
    build_tree,
    layout,
    split,
)
from cowtrace.report.load import load_report
from tests.unit.report_samples import (
    EVAL,
    EVENTS,
    core_summary,
    full_summary,
    python_writer,
    write_json,
    write_lines,
    writer,
)

PAGE = 4096


def pages(node: FlameNode) -> dict:
    """The tree as {name: (pages, {children})}, kinds checked separately."""
    return {
        name: (child.value // PAGE, pages(child)) for (name, _kind), child in node.children.items()
    }


def test_split_is_proportional_and_exact() -> None:
    assert split(32, [30, 10]) == [24, 8]
    assert split(10, [1, 1, 1]) == [4, 3, 3]  # the remainder goes to the earliest
    assert split(5, [0, 0]) == [0, 0]
    assert split(0, [3, 4]) == [0, 0]
    assert sum(split(1001, [7, 13, 17, 19])) == 1001


def test_tree_from_event_log_is_exact(tmp_path: Path) -> None:
    tree = build_tree(load_report(str(write_lines(tmp_path / "ev.jsonl", EVENTS))))
    assert tree is not None and not tree.approximate
    assert tree.root.value == 7 * PAGE
    assert pages(tree.root) == {
        "main (app)": (3, {"write_a (app)": (2, {}), "write_b (app)": (1, {})}),
        NO_STACK: (2, {}),
        TRUNCATED: (1, {EVAL: (1, {"<module> (app.py:1)": (1, {"handle (app.py:42)": (1, {})})})}),
        NO_NATIVE: (1, {"gc_collect (app.py:9)": (1, {})}),
    }
    kinds = dict(tree.root.children)  # (name, kind) keys
    assert sorted(kinds) == sorted(
        [
            ("main (app)", NATIVE),
            (NO_STACK, SYNTHETIC),
            (TRUNCATED, SYNTHETIC),
            (NO_NATIVE, SYNTHETIC),
        ]
    )
    evaluator = tree.root.children[(TRUNCATED, SYNTHETIC)].children[(EVAL, NATIVE)]
    assert list(evaluator.children) == [("<module> (app.py:1)", PYTHON)]


def test_tree_from_summary_joins_python_over_native_leaf(tmp_path: Path) -> None:
    tree = build_tree(load_report(str(write_json(tmp_path / "s.json", full_summary()))))
    assert tree is not None
    assert tree.root.value == 100 * PAGE
    # leaf: two native stacks (30, 10 pages) share the Python bytes (32) as 24 + 8, and within
    # each stack P1 : P2 = 20 : 12 (15 + 9, then the rest 5 + 3). other: one native stack of 5
    # pages holds 5 of P4's 8; the other 3, and all of P3 (leaf "nope" has no native stack),
    # stand on [native callers unknown]. 100 - 51 pages have no stack.
    assert pages(tree.root) == {
        "f1 (app)": (
            30,
            {
                "leaf (app)": (
                    30,
                    {"top (a.py:9)": (15, {"p1 (a.py:1)": (15, {})}), "p2 (a.py:2)": (9, {})},
                )
            },
        ),
        "f2 (app)": (
            10,
            {
                "leaf (app)": (
                    10,
                    {"top (a.py:9)": (5, {"p1 (a.py:1)": (5, {})}), "p2 (a.py:2)": (3, {})},
                )
            },
        ),
        TRUNCATED: (5, {"other (app)": (5, {"p4 (a.py:4)": (5, {})})}),
        NO_NATIVE: (
            6,
            {
                "nope (app)": (3, {"p3 (a.py:3)": (3, {})}),
                "other (app)": (3, {"p4 (a.py:4)": (3, {})}),
            },
        ),
        NO_STACK: (49, {}),
    }
    assert tree.approximate == ["leaf (app)"]


def test_single_native_stack_join_is_exact(tmp_path: Path) -> None:
    summary = core_summary()
    summary["writers"] = [
        {"frames": ["leaf (app)", "main (app)"], "copies": 40, "truncated": False},
    ]
    summary["python_writers"] = [
        {"frames": ["f (a.py:1)"], "native_leaf": "leaf (app)", "copies": 40},
    ]
    tree = build_tree(load_report(str(write_json(tmp_path / "s.json", summary))))
    assert tree is not None and tree.approximate == []
    assert pages(tree.root) == {
        "main (app)": (40, {"leaf (app)": (40, {"f (a.py:1)": (40, {})})}),
        NO_STACK: (60, {}),
    }


def test_no_stacks_no_tree(tmp_path: Path) -> None:
    assert build_tree(load_report(str(write_json(tmp_path / "s.json", core_summary())))) is None
    summary = core_summary()
    summary["writers"] = []
    assert build_tree(load_report(str(write_json(tmp_path / "e.json", summary)))) is None


def test_layout_places_children_side_by_side_heaviest_first(tmp_path: Path) -> None:
    tree = build_tree(load_report(str(write_lines(tmp_path / "ev.jsonl", EVENTS))))
    assert tree is not None
    bars, dropped = layout(tree)
    assert dropped == 0
    as_tuples = [(b.depth, b.x // PAGE, b.width // PAGE, b.name) for b in bars]
    assert as_tuples == [
        (0, 0, 7, "all copies"),
        (1, 0, 3, "main (app)"),
        (2, 0, 2, "write_a (app)"),
        (2, 2, 1, "write_b (app)"),
        (1, 3, 2, NO_STACK),
        (1, 5, 1, NO_NATIVE),
        (2, 5, 1, "gc_collect (app.py:9)"),
        (1, 6, 1, TRUNCATED),
        (2, 6, 1, EVAL),
        (3, 6, 1, "<module> (app.py:1)"),
        (4, 6, 1, "handle (app.py:42)"),
    ]
    parents = [b.parent for b in bars]
    assert parents == [-1, 0, 1, 1, 0, 0, 5, 0, 7, 8, 9]


def test_layout_drops_bars_too_thin_to_see() -> None:
    from cowtrace.report.flame import FlameTree

    tree = FlameTree(FlameNode("all copies", SYNTHETIC))
    tree.add([("big", NATIVE)], 10_000 * PAGE)
    tree.add([("tiny", NATIVE), ("tinier", NATIVE)], PAGE)
    bars, dropped = layout(tree, min_fraction=0.001)
    assert [b.name for b in bars] == ["all copies", "big"] and dropped == 1


@pytest.mark.parametrize("truncated", [True, False])
def test_truncated_stacks_stand_on_their_own_node(tmp_path: Path, truncated: bool) -> None:
    summary = core_summary()
    summary["writers"] = [{"frames": ["leaf (x)"], "copies": 100, "truncated": truncated}]
    tree = build_tree(load_report(str(write_json(tmp_path / "s.json", summary))))
    assert tree is not None
    expected = {TRUNCATED: (100, {"leaf (x)": (100, {})})} if truncated else {"leaf (x)": (100, {})}
    assert pages(tree.root) == expected


def test_leaf_key_joins_the_two_walks_names() -> None:
    from cowtrace.report.frames import leaf_key

    assert (
        leaf_key("PyType_Ready (python3.11)")
        == leaf_key("PyType_Ready")
        == (
            "function",
            "PyType_Ready",
        )
    )
    assert (
        leaf_key("[unknown] (python3.11)")
        == leaf_key("python3.11+0x1ad23f")
        == (
            "unknown",
            "python3.11",
        )
    )
    assert leaf_key("python3.11+0x10 (python3.11)") == ("unknown", "python3.11")
    assert leaf_key("[unknown] (libc.so.6)") != leaf_key("python3.11+0x1ad23f")
    assert leaf_key("leaf (app)") == leaf_key("leaf") != leaf_key("leaf2")


def test_summary_join_as_the_tracer_names_leaves(tmp_path: Path) -> None:
    """As a real summary has them: native frames carry their module, a Python writer's
    native_leaf does not (and is module+0xOFFSET where the object has no symbol). Every copy
    has a native stack, so Python bytes no native stack takes are left out, not counted twice.

    Native: eval (30 pages), [unknown] in python3.11 (10), _dl_relocate (5): 45 = all copies.
    Python: h over eval (20), g over python3.11+0x10 (4), l over ld.so+0x70 (3: no native stack
    ends in unknown ld.so code, and no copy lacks a native stack, so they are left out).
    """
    summary = core_summary()
    summary["totals"].update(copies=45, copied_bytes=45 * PAGE)
    summary["writers"] = [
        writer(["_PyEval_EvalFrameDefault (python3.11)"], 30),
        writer(["[unknown] (python3.11)"], 10),
        writer(["_dl_relocate_object (ld.so)", "dl_main (ld.so)"], 5),
    ]
    summary["python_writers"] = [
        python_writer(["h (a.py:1)"], "_PyEval_EvalFrameDefault", 20),
        python_writer(["g (a.py:2)"], "python3.11+0x10", 4),
        python_writer(["l (a.py:3)"], "ld.so+0x70", 3),
    ]
    tree = build_tree(load_report(str(write_json(tmp_path / "s.json", summary))))
    assert tree is not None
    assert tree.root.value == 45 * PAGE and tree.unplaced == 3 * PAGE
    assert pages(tree.root) == {
        "_PyEval_EvalFrameDefault (python3.11)": (30, {"h (a.py:1)": (20, {})}),
        "[unknown] (python3.11)": (10, {"g (a.py:2)": (4, {})}),
        "dl_main (ld.so)": (5, {"_dl_relocate_object (ld.so)": (5, {})}),
    }
    # With 2 copies no native stack holds, 2 of l's 3 pages stand on [native callers unknown].
    summary["totals"].update(copies=47, copied_bytes=47 * PAGE)
    tree = build_tree(load_report(str(write_json(tmp_path / "s.json", summary))))
    assert tree is not None and tree.unplaced == 1 * PAGE
    assert pages(tree.root)[NO_NATIVE] == (2, {"ld.so+0x70": (2, {"l (a.py:3)": (2, {})})})
    assert NO_STACK not in pages(tree.root)
