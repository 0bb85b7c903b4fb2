"""Synthetic kernel records for the attribution tests and the benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cowtrace.attribution.maps import MapSnapshot, parse_maps
from cowtrace.kernel.abi import ALLOC_EVENT_DTYPE, EVENT_DTYPE


def faults(rows: Sequence[tuple[int, int, int, int, int]]) -> np.ndarray:
    """(ts, pid, addr, kind, stack_id) rows -> EVENT_DTYPE records."""
    out = np.zeros(len(rows), EVENT_DTYPE)
    for i, (ts, pid, addr, kind, stack) in enumerate(rows):
        out[i]["ts"], out[i]["pid"], out[i]["tid"] = ts, pid, pid
        out[i]["addr"], out[i]["kind"] = addr, kind
        out[i]["stack_id"], out[i]["pystack_id"] = stack, -1
    return out


def snapshot(ts: int, pid: int, spans: Sequence[tuple[int, int, str, str]]) -> MapSnapshot:
    """A map as /proc would show it, from (start, length, perms, path) spans, taken after a
    change that began at `ts`."""
    text = "".join(
        f"{start:x}-{start + length:x} {perms} 00000000 00:00 0 {path}\n"
        for start, length, perms, path in sorted(spans)
    )
    return MapSnapshot(ts, pid, parse_maps(text))


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
