"""Synthetic summaries and event logs for the report tests, with answers derivable by hand.

EVENTS (pids 10 root, 11, 12), one line each:
  1 copy  11 0x1000 heap, block 0x1000+0x3000 of site (malloc, load), stack write_a<main
  2 copy  11 0x2000 heap, same block, stack write_a<main
  3 copy  12 0x1000 heap, same block and page as 1 (another process), stack write_b<main
  4 copy  12 0x9000 file /usr/bin/app .data (source file), no block, no stack
  5 reuse 11 0x1000 heap
  6 zero_fill 10 0x5000 plain anonymous
  7 copy  10 no addr (gup), no mapping, no block, no stack
  8 copy  11 0x20000 file /lib/x.so .bss (source file), truncated stack [_PyEval], Python
          stack handle<module
  9 copy  12 0x21000 file /lib/x.so .bss, no native stack, Python stack gc_collect
So: 7 copies (2 file, 1 gup), 1 reuse, 1 zero-fill; pid 10: 1 copy 1 zero-fill, pid 11: 3
copies 1 reuse, pid 12: 3 copies; the block has 2 distinct copied pages out of 3 copies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SITE = ["malloc (libc.so.6)", "load (app)"]
BLOCK = {"addr": 0x1000, "size": 0x3000, "origin": "malloc", "site": SITE}
WRITE_A = ["write_a (app)", "main (app)"]
WRITE_B = ["write_b (app)", "main (app)"]
EVAL = "_PyEval_EvalFrameDefault (python3.11)"
PY_HANDLE = ["handle (app.py:42)", "<module> (app.py:1)"]
PY_GC = ["gc_collect (app.py:9)"]


def event(
    pid: int,
    kind: str,
    addr: int | None,
    *,
    mapping: str | None = None,
    path: str | None = None,
    section: str | None = None,
    alloc: dict | None = None,
    stack: list[str] | None = None,
    pystack: list[str] | None = None,
    source: str = "anon",
    via: str = "user",
    truncated: bool | None = None,
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "ts": 1000.0 + pid / 100,
        "pid": pid,
        "tid": pid,
        "kind": kind,
        "addr": addr,
        "source": source,
        "via": via,
        "mapping": mapping,
        "path": path,
        "offset": 0,
        "alloc": alloc,
        "stack": stack,
        "pystack": pystack,
    }
    if section is not None:
        line["section"] = section
    if truncated is not None:
        line["truncated"] = truncated
    return line


EVENTS = [
    event(11, "copy", 0x1000, mapping="heap", alloc=BLOCK, stack=WRITE_A),
    event(11, "copy", 0x2000, mapping="heap", alloc=BLOCK, stack=WRITE_A),
    event(12, "copy", 0x1000, mapping="heap", alloc=BLOCK, stack=WRITE_B),
    event(12, "copy", 0x9000, mapping="file", path="/usr/bin/app", section=".data", source="file"),
    event(11, "reuse", 0x1000, mapping="heap"),
    event(10, "zero_fill", 0x5000, mapping="anon"),
    event(10, "copy", None, via="gup"),
    event(
        11,
        "copy",
        0x20000,
        mapping="file",
        path="/lib/x.so",
        section=".bss",
        source="file",
        stack=[EVAL],
        truncated=True,
        pystack=PY_HANDLE,
    ),
    event(12, "copy", 0x21000, mapping="file", path="/lib/x.so", section=".bss", pystack=PY_GC),
]

CORE_EVENTS = [
    {"ts": 1.0, "pid": 5, "tid": 5, "kind": "copy", "addr": 4096, "source": "anon", "via": "user"},
    {"ts": 2.5, "pid": 6, "tid": 7, "kind": "copy", "addr": 8192, "source": "file", "via": "user"},
    {"ts": 2.0, "pid": 6, "tid": 6, "kind": "reuse", "addr": 8192, "source": "anon", "via": "user"},
]
"""What the core tracer alone writes: no attribution fields."""


def process(pid: int, copies: int, **extra: Any) -> dict[str, Any]:
    base = {
        "pid": pid,
        "ppid": 1 if pid == 100 else 100,
        "comm": "master" if pid == 100 else "worker",
        "role": "root" if pid == 100 else "child",
        "copies": copies,
        "copied_bytes": copies * 4096,
        "reuses": 0,
        "zero_fills": 0,
        "file_copies": 0,
        "gup_copies": 0,
        "exited": True,
        "exit_code": 0,
        "exit_signal": None,
        "adopted": False,
        "execs": 0,
    }
    base.update(extra)
    return base


def core_summary() -> dict[str, Any]:
    """A schema-1 summary as the core tracer writes it today: no attribution sections."""
    return {
        "schema": 1,
        "root_pid": 100,
        "duration_s": 4.5,
        "end_reason": "root exited",
        "totals": {
            "copies": 100,
            "copied_bytes": 409600,
            "reuses": 7,
            "zero_fills": 2,
            "file_copies": 3,
            "gup_copies": 0,
            "lost_events": 0,
        },
        "processes": [
            process(101, 60, reuses=7),
            process(100, 10, zero_fills=2),
            process(102, 30, exited=False, exit_code=None),
        ],
        "tracer": {"attach_s": 1.2},
    }


def writer(frames: list[str], copies: int, truncated: bool = False) -> dict[str, Any]:
    return {
        "frames": frames,
        "copies": copies,
        "copied_bytes": copies * 4096,
        "processes": 1,
        "truncated": truncated,
    }


def python_writer(frames: list[str], leaf: str, copies: int) -> dict[str, Any]:
    return {
        "frames": frames,
        "native_leaf": leaf,
        "category": "refcount",
        "copies": copies,
        "copied_bytes": copies * 4096,
    }


def full_summary() -> dict[str, Any]:
    """core_summary() with every attribution section (100 copies in all).

    Writers: A = leaf<f1 (30 pages), B = leaf<f2 (10), C = other (5, truncated).
    Python writers: P1 over leaf (20), P2 over leaf (12), P3 over nope (3), P4 over other (8).
    """
    summary = core_summary()
    summary["processes"][0].update(
        exit_copies=12,
        exit_writers=[{"frames": ["free (libc.so.6)", "cleanup (app)"], "copies": 12}],
    )
    summary["processes"][1].update(exit_copies=0, exit_writers=[])
    summary["processes"][2].update(exit_copies=0, exit_writers=[])
    summary["regions"] = [
        {
            "kind": "heap",
            "name": "[heap]",
            "section": None,
            "copies": 70,
            "copied_bytes": 70 * 4096,
            "reuses": 5,
            "zero_fills": 0,
            "processes": 2,
        },
        {
            "kind": "file",
            "name": "/usr/bin/python3.11",
            "section": ".data",
            "copies": 30,
            "copied_bytes": 30 * 4096,
            "reuses": 2,
            "zero_fills": 2,
            "processes": 1,
        },
    ]
    summary["allocations"] = [
        {
            "site": ["malloc (libc.so.6)", "load_model (app)", "main (app)"],
            "origin": "malloc",
            "allocator": "glibc",
            "blocks": 1,
            "block_bytes": 64 << 20,
            "copies": 50,
            "copied_bytes": 50 * 4096,
            "largest": [{"addr": 0x7F0000000000, "size": 64 << 20, "copied_pages": 50}],
        },
        {
            "site": [],
            "origin": "recovered",
            "allocator": "glibc",
            "blocks": 40,
            "block_bytes": 40 * 64,
            "copies": 4,
            "copied_bytes": 4 * 4096,
            "largest": [],
        },
    ]
    summary["writers"] = [
        writer(["leaf (app)", "f1 (app)"], 30),
        writer(["leaf (app)", "f2 (app)"], 10),
        writer(["other (app)"], 5, truncated=True),
    ]
    summary["python_writers"] = [
        python_writer(["p1 (a.py:1)", "top (a.py:9)"], "leaf (app)", 20),
        python_writer(["p2 (a.py:2)"], "leaf (app)", 12),
        python_writer(["p3 (a.py:3)"], "nope (app)", 3),
        python_writer(["p4 (a.py:4)"], "other (app)", 8),
    ]
    summary["why"] = ["refcount writes (32% of copies) under p1 (a.py:1)"]
    return summary


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def write_lines(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path
