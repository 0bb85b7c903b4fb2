"""The attribution fields of `--events` lines: mapping, offset, block and writer stack of each
fault, as JSON text joined from pieces cached per region, block and stack id (a drain writes
tens of thousands of lines; output/events.py appends these suffixes to the kernel's fields)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from cowtrace.attribution.allocs import BlockRegistry
from cowtrace.attribution.maps import UNKNOWN_REGION, RegionRegistry
from cowtrace.attribution.writers import StackCache


class EventFields:
    """Builds each record's suffix; `modules` names the objects of module+0xOFFSET frames."""

    def __init__(
        self,
        regions: RegionRegistry,
        blocks: BlockRegistry,
        stacks: StackCache,
        modules: Callable[[], dict[str, Any]],
    ) -> None:
        self.regions = regions
        self.blocks = blocks
        self.stacks = stacks
        self.modules = modules
        self._alloc_text: dict[int, str] = {}
        self._stack_text: dict[int, str] = {}
        self._logged: set[str] = set()  # modules whose build-id the event log has

    def fill(
        self,
        pid: int,
        stack_ids: np.ndarray,
        region: np.ndarray,
        offset: np.ndarray,
        has_addr: np.ndarray,
        best: np.ndarray,
        index: np.ndarray,
        extras: np.ndarray,
    ) -> None:
        """The --events suffix of each fault of `pid` (`index` into `extras`)."""
        fragments = np.array(self.regions.fragments, dtype=object)
        mapping = fragments[np.where(has_addr, region, UNKNOWN_REGION)]
        offsets = [str(o) if o >= 0 else "null" for o in offset.tolist()]
        allocs = [self._alloc_json(uid) if uid >= 0 else "null" for uid in best.tolist()]
        sids, inverse = np.unique(stack_ids, return_inverse=True)
        stacks = np.array([self._stack_json(int(sid), pid) for sid in sids], dtype=object)
        extras[index] = [
            f', {m}, "offset": {o}, "alloc": {a}, "stack": {st}'
            for m, o, a, st in zip(
                mapping.tolist(), offsets, allocs, stacks[inverse].tolist(), strict=True
            )
        ]

    def drop_stacks(self, ids: list[int]) -> None:
        """Released stack ids: the kernel may hand them out again for other stacks."""
        for sid in ids:
            self._stack_text.pop(sid, None)

    def _alloc_json(self, uid: int) -> str:
        found = self._alloc_text.get(uid)
        if found is None:
            origin = self.blocks.sites[int(self.blocks.site[uid])].origin
            found = self._alloc_text[uid] = (
                f'{{"addr": {int(self.blocks.addr[uid])}, "size": {int(self.blocks.size[uid])}, '
                f'"origin": "{origin}"}}'
            )
        return found

    def _stack_json(self, sid: int, pid: int) -> str:
        found = self._stack_text.get(sid)
        if found is None:
            found = self._stack_text[sid] = self.stacks.get(sid, pid).json if sid >= 0 else "null"
            # Objects first named in a module+0xOFFSET frame: their build-ids go on this
            # stack's lines of this batch, once per log, for `cowtrace report` (events.py).
            modules = self.modules()
            new = {name: info for name, info in modules.items() if name not in self._logged}
            if new:
                self._logged.update(new)
                return f'{found}, "modules": {json.dumps(new)}'
        return found
