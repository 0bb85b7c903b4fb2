"""The --events log: JSON Lines, one object per classified event (product.md, "Contracts").

`{"ts": float, "pid": int, "tid": int, "kind": "copy"|"reuse"|"zero_fill", "addr": int|null,
  "source": "anon"|"file", "via": "user"|"kernel"|"gup"}`

ts is Unix time in seconds.  addr is the page-aligned virtual address, null for writes made
through get_user_pages (no fault, so no address).  via says who wrote: the process' own
instructions, the kernel on its behalf (read() into a buffer, the tid at fork and exit), or
get_user_pages (direct I/O, process_vm_writev).

With attribution on, each line also carries (after "via"):
`"mapping": kind|null, "path": str|null, "offset": int|null,
 "alloc": {"addr": int, "size": int, "origin": "malloc"|"recovered"}|null,
 "stack": ["function (module)", ...]|null`
(mapping kinds as in cowtrace/results.py; path for file, shm and named anonymous mappings;
offset into the file for file mappings; alloc the block covering most of the page; stack the
writer's native stack, innermost first).  A frame of an object with no symbol there is
`module+0xOFFSET (module)` (OFFSET into the file); the first lines whose stack names such an
object also carry `"modules": {module: {"path", "build_id", "loads"}}` (as in the summary,
once per object per log), so `cowtrace report` can name it from a debug file later.
The engine hands them typed (results.FaultAttribution: per record, indices into tables of
regions, blocks and stacks); the text of each distinct row is made once and kept, so the log's
per-line cost stays one f-string.

With Python stacks on, each record also has `"pystack": ["function (file:line)", ...] | null`
(the writer's Python stack, innermost first; null for reuses, zero-fills and non-Python writers).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import IO

import numpy as np

from cowtrace.kernel.abi import KIND_NAMES, SOURCE_NAMES, VIA_NAMES
from cowtrace.results import UNMAPPED, Block, FaultAttribution, FaultPythonStacks, Region


def monotonic_to_unix_offset() -> float:
    """What to add to a CLOCK_MONOTONIC time (the kernel's ktime) to get Unix time."""
    return time.time() - time.monotonic()


class EventLog:
    """Appends detail records to a JSON Lines file (or stdout for "-")."""

    def __init__(self, path: str) -> None:
        self._own = path != "-"
        # The log lives as long as the session, not a block: closed by close().
        self._file: IO[str] = (
            open(path, "w", buffering=1 << 20) if self._own else sys.stdout  # noqa: SIM115
        )
        self._offset = monotonic_to_unix_offset()
        self._texts = FieldTexts()
        self.written = 0

    def write(
        self,
        records: np.ndarray,
        fields: FaultAttribution | None = None,
        pystacks: FaultPythonStacks | None = None,
    ) -> None:
        """Write a batch of EVENT_DTYPE records, in kernel order.

        `fields`, when given, holds each record's attribution fields (what the sink's
        on_fault_events returns); `pystacks`, when Python stacks are on, each record's Python
        stack (the tracker's on_fault_events).
        """
        if len(records) == 0:
            return
        suffixes = self._texts.attribution(fields) if fields is not None else [""] * len(records)
        if pystacks is not None:
            suffixes = [
                f'{suffix}, "pystack": {stack}'
                for suffix, stack in zip(suffixes, self._texts.pystacks(pystacks), strict=True)
            ]
        ts = (records["ts"] / 1e9 + self._offset).tolist()
        addrs = records["addr"].tolist()
        pids = records["pid"].tolist()
        tids = records["tid"].tolist()
        kinds = records["kind"].tolist()
        sources = records["source"].tolist()
        vias = records["via"].tolist()
        lines = []
        for t, addr, pid, tid, kind, source, via, suffix in zip(
            ts, addrs, pids, tids, kinds, sources, vias, suffixes, strict=True
        ):
            address = "null" if addr == 0 else str(addr)
            lines.append(
                f'{{"ts": {t:.6f}, "pid": {pid}, "tid": {tid}, "kind": "{KIND_NAMES[kind]}", '
                f'"addr": {address}, "source": "{SOURCE_NAMES[source]}", '
                f'"via": "{VIA_NAMES[via]}"{suffix}}}\n'
            )
        self._file.write("".join(lines))
        self.written += len(lines)

    def close(self) -> None:
        if self._own:
            self._file.close()
        else:
            self._file.flush()


class FieldTexts:
    """The JSON text of the typed fields, made once per distinct region, block and stack."""

    def __init__(self) -> None:
        self._regions: list[str] = []  # per region index (the engine's table only grows)
        self._region_table: Sequence[Region] | None = None
        self._blocks: dict[int, str] = {}  # by identity: the rows are kept in _kept
        self._kept: list[Block] = []
        self._stacks: dict[tuple[str, ...], str] = {}  # by frames (native or Python)

    def attribution(self, fields: FaultAttribution) -> list[str]:
        """Each record's fields after "via", starting with ", "."""
        mapping = np.array(self._region_texts(fields.regions), dtype=object)[fields.region]
        offsets = [str(o) if o >= 0 else "null" for o in fields.offset.tolist()]
        known = self._blocks.get
        blocks = _with_null([known(id(b)) or self._block(b) for b in fields.blocks])
        blocks = blocks[fields.block]
        stacks = _with_null([self._stack(s.frames) for s in fields.stacks])[fields.stack]
        for index in np.flatnonzero(fields.modules >= 0).tolist():
            modules = fields.new_modules[int(fields.modules[index])]
            stacks[index] = f'{stacks[index]}, "modules": {json.dumps(modules)}'
        return [
            f', {m}, "offset": {o}, "alloc": {a}, "stack": {st}'
            for m, o, a, st in zip(
                mapping.tolist(), offsets, blocks.tolist(), stacks.tolist(), strict=True
            )
        ]

    def pystacks(self, pystacks: FaultPythonStacks) -> list[str]:
        """Each record's "pystack" value."""
        texts = _with_null([self._stack(s.frames) for s in pystacks.stacks])
        return texts[pystacks.stack].tolist()

    def _region_texts(self, regions: Sequence[Region]) -> list[str]:
        if regions is not self._region_table:  # another engine's table: start over
            self._region_table, self._regions = regions, []
        for region in regions[len(self._regions) :]:
            self._regions.append(
                '"mapping": null, "path": null'
                if region == UNMAPPED
                else f'"mapping": "{region.kind}", "path": {json.dumps(region.path)}'
            )
        return self._regions

    def _block(self, block: Block) -> str:
        self._kept.append(block)  # so that its id stays its own
        text = self._blocks[id(block)] = (
            f'{{"addr": {block.addr}, "size": {block.size}, "origin": "{block.origin}"}}'
        )
        return text

    def _stack(self, frames: tuple[str, ...]) -> str:
        found = self._stacks.get(frames)
        if found is None:
            found = self._stacks[frames] = json.dumps(list(frames))
        return found


def _with_null(texts: list[str]) -> np.ndarray:
    """`texts` with "null" last, so that index -1 (none) picks it."""
    return np.array([*texts, "null"], dtype=object)
