"""Native user stacks: the kernel's stack ids to addresses, and addresses to `function (module)`.

The BPF program stores each distinct stack once, in `fault_stacks` for user-mode faults (its own
frame-pointer walk; ids from STACK_ENTRIES up) and in `user_stacks` for the rest
(bpf_get_stackid: allocations, the kernel writing for a process), and puts its id in fault and
allocation records.  Ids are never reused (no BPF_F_REUSE_STACKID),
so an id read once stays right: addresses are cached, and the whole map is copied out before
the program is unloaded (`freeze`), for the summary written after the session ends.

Symbols come from cowtrace's own per-process cache (host/symbols.py: the process' executable
mappings and their ELF symbols; not bcc's, which closes descriptors that are not its own).  A
cache reads /proc/PID/maps when it is created and opens each object when first asked, and keeps
working after the process has exited; created for a process that is already gone it knows
nothing.  So the session `warm`s a cache for every member as soon as it learns of it (adopt,
exec, first record), and a writer that exited before that is resolved through its parent or
the root: a forked child shares its parent's mappings until it execs.  A cache made right
after an exec knows the executable and the loader, not the libraries the loader maps next:
a process whose map changes bring a new executable file mapping gets a newer cache while it
lives (`note_code_mapped`).  The older ones are kept behind it: a process can exit between
the check and the read, and a cache made from a zombie's empty maps file knows nothing.

An address in a mapped object without a symbol there is named `module+0xOFFSET (module)`,
OFFSET the file offset (what debuginfo tools take with a build-id), and the module's path,
build-id and PT_LOAD segments are kept (`modules`, the summary's "modules"): `cowtrace report`
names such frames later from a debug file (report/resymbolize.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cowtrace.host.symbols import ProcessSymbols, Resolved

UNKNOWN = "[unknown]"
CACHES_PER_IMAGE = 3  # a process' newest symbol caches, newest first (see note_code_mapped)


def _frames(ips: Sequence[int]) -> tuple[int, ...]:
    """A stack's frames: up to the first 0 (the walk's end; what follows it is stale)."""
    frames = []
    for addr in ips:
        if not addr:
            break
        frames.append(addr)
    return tuple(frames)


class KernelStackResolver:
    """StackResolver (cowtrace/attribution/sink.py) over the loaded program's user_stacks."""

    def __init__(
        self,
        bpf: Any,
        *,
        root: Callable[[], int] = lambda: 0,
        entries: int = 32768,
    ) -> None:
        self._entries = entries  # STACK_ENTRIES: fault_stacks' ids start there
        self._table = None if bpf is None else bpf["user_stacks"]
        # Stacks of user-mode faults, walked by the program itself (walk_fault_stack).
        self._fault_table = None if bpf is None else bpf["fault_stacks"]
        self._root = root
        self._stacks: dict[int, tuple[int, ...]] = {}
        self._caches: dict[int, list[Any]] = {}  # pid -> its symbol caches, newest first
        self._image_of: dict[int, int] = {}  # pid -> the pid whose cache covers its program
        self._names: dict[int, dict[int, str]] = {}  # pid -> addr -> name
        self._orphans: set[int] = set()  # stack ids no record named at the last sweep
        self._modules: dict[str, dict[str, Any]] = {}  # basename -> path, build_id, loads

    # ---- addresses -------------------------------------------------------------------------
    def addresses(self, stack_id: int) -> Sequence[int]:
        """Addresses of a user stack, innermost first; empty if the id is unknown."""
        if stack_id < 0:
            return ()
        cached = self._stacks.get(stack_id)
        table = self._fault_table if stack_id >= self._entries else self._table
        if cached is not None or table is None:
            return cached or ()
        try:
            leaf = table[table.Key(stack_id)]
        except KeyError:
            return ()
        frames = _frames(leaf.ip)
        self._stacks[stack_id] = frames
        return frames

    def freeze(self) -> None:
        """Copy every stack out of the map: called just before the program is unloaded."""
        for table in (self._table, self._fault_table):
            if table is None:
                continue
            for key, leaf in table.items():
                self._stacks.setdefault(key.value, _frames(leaf.ip))
        self._table = self._fault_table = None

    def drop_stacks(self, stack_ids: Iterable[int]) -> None:
        """Delete released stack ids (AttributionEngine.release_stacks) from the kernel's maps
        and from the cache: the maps keep each stack until deleted, and would fill up."""
        for stack_id in stack_ids:
            self._stacks.pop(stack_id, None)
            table = self._fault_table if stack_id >= self._entries else self._table
            if table is not None:
                with contextlib.suppress(KeyError):
                    del table[table.Key(stack_id)]

    def sweep_orphans(self, known: Iterable[int]) -> int:
        """Delete stacks no record ever named: the kernel stores a stack at the fault, before
        it knows whether the fault becomes a record (many do not), so such entries would stay
        forever.  An id unknown to user space at two sweeps in a row (a drain or more apart:
        its record, if any, would have been read) is deleted.  Returns how many."""
        known = set(known)
        orphans: set[int] = set()
        for table in (self._table, self._fault_table):
            if table is not None:
                orphans.update(key.value for key in table if key.value not in known)
        stale = orphans & self._orphans
        self._orphans = orphans - stale
        self.drop_stacks(stale)
        return len(stale)

    # ---- symbols ---------------------------------------------------------------------------
    def note_image(self, pid: int) -> None:
        """`pid` runs a program of its own (the root, an adopted member, an exec): make its
        symbol cache now, while it lives, replacing one made before an exec."""
        self._image_of[pid] = pid
        self._caches.pop(pid, None)
        self._names.pop(pid, None)
        self._warm(pid)

    def note_fork(self, parent: int, child: int) -> None:
        """A forked child shares its parent's program image until it execs."""
        self._image_of[child] = self._image_of.get(parent, parent)

    def note_code_mapped(self, pids: Iterable[int]) -> None:
        """These processes mapped an executable file (the loader mapping the libraries after
        an exec, dlopen; attribution/maps.py MapWatcher): give each a newer symbol cache while
        it still lives, since objects mapped after its cache was made are unknown to it.  Rare
        after start-up."""
        for pid in pids:
            caches = self._caches.get(pid)
            if caches:
                newer = ProcessSymbols(pid)
                if newer:
                    caches.insert(0, newer)
                    del caches[CACHES_PER_IMAGE:]
                    self._names.pop(pid, None)

    def _warm(self, pid: int) -> list[ProcessSymbols]:
        caches = self._caches.get(pid)
        if caches is None and pid > 0:
            cache = ProcessSymbols(pid)
            if cache:  # a zombie's empty maps: no cache rather than one that knows nothing
                caches = self._caches[pid] = [cache]
        return caches or []

    def symbolize(self, pid: int, addr: int) -> str:
        """`function (module)` for an address in `pid`'s memory; `[unknown] (module)` when the
        object has no symbol there, `[unknown]` when no mapping is known."""
        names = self._names.setdefault(pid, {})
        name = names.get(addr)
        if name is None:
            name = names[addr] = self._resolve(pid, addr)
        return name

    def forget(self, pid: int) -> None:
        """A process long gone (the agent, after its grace period): drop its symbol caches,
        its image and its names, so that a tracer running for weeks does not grow with every
        worker."""
        self._caches.pop(pid, None)
        self._image_of.pop(pid, None)
        self._names.pop(pid, None)

    def close(self) -> None:
        """Drop every symbol cache."""
        self._caches.clear()
        self._names.clear()

    def _candidates(self, pid: int) -> list[int]:
        """The image pid runs, pid itself, then the root: each at most once."""
        chain: list[int] = []
        for candidate in (self._image_of.get(pid, pid), pid, self._root()):
            if candidate > 0 and candidate not in chain:
                chain.append(candidate)
        return chain

    def _resolve(self, pid: int, addr: int) -> str:
        for candidate in self._candidates(pid):
            for cache in self._warm(candidate):
                found = cache.resolve(addr)
                if found is None:
                    continue
                module_name = os.path.basename(found.path)
                if found.function is not None:
                    return f"{found.function} ({module_name})"
                return self._unnamed(found)
        return UNKNOWN

    def _unnamed(self, found: Resolved) -> str:
        """`module+0xOFFSET (module)` for code of a mapped object with no symbol there: the
        offset into the file, which debuginfo tools read with the module's build-id."""
        name = os.path.basename(found.path)
        if found.image is None:
            return f"{UNKNOWN} ({name})"
        # the path the process names (a container's), not where cowtrace opened it
        self._modules.setdefault(name, {**found.image.module_info(), "path": found.path})
        return f"{name}+0x{found.file_offset:x} ({name})"

    def modules(self) -> dict[str, dict[str, Any]]:
        """The objects named in `module+0xOFFSET` frames so far: basename -> {"path",
        "build_id", "loads": [[file offset, link address, size], ...]}."""
        return dict(self._modules)
