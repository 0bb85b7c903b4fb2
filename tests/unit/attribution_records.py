"""Synthetic kernel records for the attribution tests and the benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cowtrace.kernel.records import (
    ALLOC_EVENT_DTYPE,
    EVENT_DTYPE,
    MAP_EVENT_DTYPE,
    MAP_OP_MMAP,
)

PROT_RW, PROT_RX = 0x3, 0x5
MAP_PRIVATE_ANON = 0x22
MAP_PRIVATE = 0x02


def faults(rows: Sequence[tuple[int, int, int, int, int]]) -> np.ndarray:
    """(ts, pid, addr, kind, stack_id) rows -> EVENT_DTYPE records."""
    out = np.zeros(len(rows), EVENT_DTYPE)
    for i, (ts, pid, addr, kind, stack) in enumerate(rows):
        out[i]["ts"], out[i]["pid"], out[i]["tid"] = ts, pid, pid
        out[i]["addr"], out[i]["kind"] = addr, kind
        out[i]["stack_id"], out[i]["pystack_id"] = stack, -1
    return out


def map_events(rows: Sequence[dict[str, int]]) -> np.ndarray:
    """Dicts of MAP_EVENT_DTYPE fields (missing ones: 0, fd -1) -> records."""
    out = np.zeros(len(rows), MAP_EVENT_DTYPE)
    for i, row in enumerate(rows):
        out[i]["fd"] = -1
        for key, value in row.items():
            out[i][key] = value
    return out


def mmap(ts: int, pid: int, start: int, length: int, *, prot: int = PROT_RW, **kw: int) -> dict:
    flags = kw.pop("flags", MAP_PRIVATE_ANON)
    return dict(ts=ts, pid=pid, op=MAP_OP_MMAP, start=start, length=length, prot=prot,
                flags=flags, **kw)  # fmt: skip


def alloc_events(rows: Sequence[tuple[int, int, int, int, int, int, int]]) -> np.ndarray:
    """(ts, pid, op, addr, size, old_addr, stack_id) rows -> ALLOC_EVENT_DTYPE records."""
    out = np.zeros(len(rows), ALLOC_EVENT_DTYPE)
    for i, (ts, pid, op, addr, size, old, stack) in enumerate(rows):
        out[i]["ts"], out[i]["pid"], out[i]["tid"], out[i]["op"] = ts, pid, pid, op
        out[i]["addr"], out[i]["size"], out[i]["old_addr"] = addr, size, old
        out[i]["stack_id"] = stack
    return out


class FakeResolver:
    """Stacks from a dict; a frame is named after its address."""

    def __init__(self, stacks: dict[int, list[int]]) -> None:
        self.stacks = stacks
        self.lookups = 0

    def addresses(self, stack_id: int) -> list[int]:
        self.lookups += 1
        return self.stacks.get(stack_id, [])

    def symbolize(self, pid: int, addr: int) -> str:
        return f"f_{addr:x} (prog)"
