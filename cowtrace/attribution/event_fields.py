"""The attribution of each record of a drained batch, for `--events`: mapping, offset, block and
writer stack, as a results.FaultAttribution (columns of indices into tables of typed rows;
output/events.py writes the JSON).  Typed rows are kept per block and stack id, so a drain of
tens of thousands of records builds only the rows it has not seen before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cowtrace.attribution.allocs import BlockRegistry
from cowtrace.attribution.maps import UNKNOWN_REGION, RegionRegistry
from cowtrace.attribution.writers import StackCache
from cowtrace.results import Block, FaultAttribution, Stack


class EventFields:
    """Builds each batch's FaultAttribution; `modules` names the objects of module+0xOFFSET
    frames."""

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
        self._blocks: dict[int, Block] = {}  # block uid -> its row
        self._stacks: dict[int, Stack | None] = {}  # stack id -> its stack (None: no stack)
        self._logged: set[str] = set()  # modules whose build-id the event log has

    def batch(self, n: int) -> BatchFields:
        """The builder of one batch of `n` records (filled per pid by the engine)."""
        return BatchFields(self, n)

    def drop_stacks(self, ids: list[int]) -> None:
        """Released stack ids: the kernel may hand them out again for other stacks."""
        for sid in ids:
            self._stacks.pop(sid, None)

    def block_rows(self, uids: list[int]) -> tuple[Block, ...]:
        """The rows of these block uids (a drain's distinct blocks: made once per uid)."""
        known = self._blocks.get
        return tuple(known(uid) or self._new_block(uid) for uid in uids)

    def _new_block(self, uid: int) -> Block:
        origin = self.blocks.sites[int(self.blocks.site[uid])].origin
        found = self._blocks[uid] = Block(
            int(self.blocks.addr[uid]), int(self.blocks.size[uid]), origin
        )
        return found

    def stack(self, sid: int, pid: int) -> tuple[Stack | None, dict[str, Any] | None]:
        """The stack of `sid` (None for no stack), and the modules first named since the last
        stack id seen for the first time, on that first time only: they go on its records of
        this batch, once per log, for `cowtrace report` (output/events.py)."""
        if sid in self._stacks:
            return self._stacks[sid], None
        found = self._stacks[sid] = self.stacks.get(sid, pid) if sid >= 0 else None
        new = {name: info for name, info in self.modules().items() if name not in self._logged}
        self._logged.update(new)
        return found, new or None


class BatchFields:
    """One batch's columns, filled pid by pid (`index`: the positions of its records)."""

    def __init__(self, fields: EventFields, n: int) -> None:
        self.fields = fields
        self.region = np.full(n, UNKNOWN_REGION, np.int64)
        self.offset = np.full(n, -1, np.int64)
        self.uid = np.full(n, -1, np.int64)
        self.stack = np.full(n, -1, np.int64)
        self.modules = np.full(n, -1, np.int64)
        self._stacks: list[Stack] = []
        self._stack_index: dict[int, int] = {}  # stack id -> position in _stacks
        self._new_modules: list[dict[str, Any]] = []

    def fill(
        self,
        pid: int,
        stack_ids: np.ndarray,
        region: np.ndarray,
        offset: np.ndarray,
        has_addr: np.ndarray,
        best: np.ndarray,
        index: np.ndarray,
    ) -> None:
        """The fields of the faults of `pid` (at `index` in the batch)."""
        self.region[index] = np.where(has_addr, region, UNKNOWN_REGION)
        self.offset[index] = offset
        self.uid[index] = best
        sids, inverse = np.unique(stack_ids, return_inverse=True)
        positions = np.full(len(sids), -1, np.int64)
        for position, sid in enumerate(sids.tolist()):
            stack, new = self.fields.stack(sid, pid)
            if stack is not None:
                positions[position] = self._position(sid, stack)
            if new is not None:
                self.modules[index[inverse.reshape(-1) == position]] = len(self._new_modules)
                self._new_modules.append(new)
        self.stack[index] = positions[inverse.reshape(-1)]

    def _position(self, sid: int, stack: Stack) -> int:
        found = self._stack_index.get(sid)
        if found is None:
            found = self._stack_index[sid] = len(self._stacks)
            self._stacks.append(stack)
        return found

    def done(self) -> FaultAttribution:
        has_block = self.uid >= 0
        uids, inverse = np.unique(self.uid[has_block], return_inverse=True)
        block = np.full(len(self.uid), -1, np.int64)
        block[has_block] = inverse.reshape(-1)
        return FaultAttribution(
            region=self.region,
            offset=self.offset,
            block=block,
            stack=self.stack,
            modules=self.modules,
            regions=self.fields.regions.regions,
            blocks=self.fields.block_rows(uids.tolist()),
            stacks=tuple(self._stacks),
            new_modules=tuple(self._new_modules),
        )
