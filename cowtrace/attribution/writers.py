"""Native stacks, resolved once per stack id, cut where they stop being believable.

Most distribution binaries are built without frame pointers, so the kernel's stack walk often
returns the leaf and then whatever the frame-pointer register happened to hold.  A return
address must lie in an executable mapping of the process; the first one that does not ends the
stack, and the stack is marked `truncated` so the output can say "only the leading frames are
real" instead of printing garbage.
"""

from __future__ import annotations

from collections.abc import Callable

from cowtrace.attribution.sink import StackResolver
from cowtrace.kernel.stacks import UNKNOWN
from cowtrace.results import NO_STACK, Stack


class StackCache:
    """stack id -> Stack, resolving through the StackResolver once per id.

    `is_code(pid, addr)` says whether addr lies in an executable mapping of pid (None when the
    map of pid is unknown: then every frame is believed).
    """

    def __init__(
        self,
        resolver: StackResolver | None,
        is_code: Callable[[int, int], bool | None],
    ) -> None:
        self.resolver = resolver
        self.is_code = is_code
        self._stacks: dict[int, Stack] = {}
        self._callers: dict[tuple[int, int], Stack] = {}

    def get(self, stack_id: int, pid: int) -> Stack:
        if stack_id < 0 or self.resolver is None:
            return NO_STACK
        found = self._stacks.get(stack_id)
        if found is None:
            try:
                addresses = list(self.resolver.addresses(stack_id))
            except Exception:  # noqa: BLE001 - an unreadable stack is a missing one, not a crash
                addresses = []
            found = self._stacks[stack_id] = self._resolve(addresses, pid)
        return found

    def drop(self, stack_ids: list[int]) -> None:
        """Forget these ids (released: the kernel may give them to other stacks later)."""
        for stack_id in stack_ids:
            self._stacks.pop(stack_id, None)

    def caller(self, addr: int, pid: int) -> Stack:
        """A one-frame stack for an allocation whose stack was not captured."""
        if addr == 0 or self.resolver is None:
            return NO_STACK
        key = (addr, pid)
        found = self._callers.get(key)
        if found is None:
            found = self._callers[key] = self._resolve([addr], pid)
        return found

    def _resolve(self, addresses: list[int], pid: int) -> Stack:
        frames: list[str] = []
        truncated = False
        for index, addr in enumerate(addresses):
            if addr == 0:  # the walk's natural end
                break
            # The first address is the instruction that wrote: real code whatever the map we
            # hold says (it may be stale: an exec'd process gone before its map was read).
            is_code = True if index == 0 else self.is_code(pid, addr)
            if is_code is False:
                truncated = True
                break
            assert self.resolver is not None
            try:
                name = self.resolver.symbolize(pid, addr)
            except Exception:  # noqa: BLE001 - a symbolizer failure must not end tracing
                name = f"0x{addr:x} (?)"
            if is_code is None and frames and name == UNKNOWN:
                # The map is unknown (the process exited before it was read), but no object
                # the symbolizer knows holds this return address either: in no mapping.
                truncated = True
                break
            frames.append(name)
        return Stack(tuple(frames), truncated)
