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
The engine builds these as ready-made JSON text (AttributionEngine.on_fault_events), so the
log's per-line cost stays one f-string.

With Python stacks on, each record also has `"pystack": ["function (file:line)", ...] | null`
(the writer's Python stack, innermost first; null for reuses, zero-fills and non-Python writers).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import IO

import numpy as np

from cowtrace.kernel.abi import KIND_NAMES, SOURCE_NAMES, VIA_NAMES


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
        self.written = 0

    def write(
        self,
        records: np.ndarray,
        extra: Sequence[str] | None = None,
        pystacks: Sequence[str] | None = None,
    ) -> None:
        """Write a batch of EVENT_DTYPE records, in kernel order.

        `extra`, when given, holds one string per record spliced in before the closing brace:
        the attribution fields, starting with ", " (what the sink's on_fault_events returns).
        `pystacks`: when Python stacks are on, each record's `"pystack"` value as JSON text (a
        list of frames, innermost first, or null).
        """
        if len(records) == 0:
            return
        suffixes = extra if extra is not None else [""] * len(records)
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
        if pystacks is not None:
            lines = [
                f'{line[:-2]}, "pystack": {stack}}}\n'
                for line, stack in zip(lines, pystacks, strict=True)
            ]
        self._file.write("".join(lines))
        self.written += len(lines)

    def close(self) -> None:
        if self._own:
            self._file.close()
        else:
            self._file.flush()
