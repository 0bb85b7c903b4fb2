"""The session's view of Python stacks: which members are CPython, their layouts in the kernel,
and the copies folded into PythonWriters.

Membership follows the family: a member is looked at when adopted and after each exec (then
again on later steps while the loader has not mapped libpython yet); a forked child shares its
parent's image (the kernel copied the layout at the fork, before the child ran).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from cowtrace.host import remote_reads
from cowtrace.host.remote_reads import drain_lru_batches, drained_reads
from cowtrace.kernel.abi import (
    KIND_COPY,
    PE_EXEC,
    PE_FORK,
    PE_FREE,
    PYF_TRUNCATED,
)
from cowtrace.python import kernel
from cowtrace.python.budget import TypesBudget
from cowtrace.python.copied_types import CopiedTypes
from cowtrace.python.detect import PythonImage, detect
from cowtrace.python.resolve import (
    Fingerprint,
    frame_name,
    leaf_mapping,
    leaf_name,
    new_stack_names,
)
from cowtrace.python.writers import CATEGORIES, PythonWriters, categorize
from cowtrace.results import FaultPythonStacks, ResolvedStack

PENDING_S = 5.0  # how long an exec'd member may take to map libpython
EXEC_WAIT_TRIES, EXEC_WAIT_S = 10, 0.002  # waited for it at once, at most
STACK_AGE_S = 60.0  # how long a stack keeps its kernel entry and its names (age_stacks)


class PythonStacks:
    def __init__(self, budget: TypesBudget | None = None, stack_age_s: float = STACK_AGE_S) -> None:
        self._bpf: Any = None
        self._watcher: kernel.NewStackWatcher | None = None
        # the memory files the watcher's thread keeps open for a bunch of new stacks
        self._note_files: dict[int, remote_reads.MemoryFile | None] = {}
        # and the code objects' fingerprints read from each writer for the bunch, by address
        self._note_prints: dict[int, dict[int, Fingerprint | None]] = {}
        self.images: dict[int, PythonImage] = {}
        self.pending: dict[int, float] = {}  # pid -> give-up time
        self.notices: list[str] = []
        self.writers = PythonWriters()
        self._raw: dict[int, kernel.RawStack] = {}
        # Each new stack's frame names, bound when it was first seen (by (image, stack id)): the
        # cache by address may hold another code object's by the drain.
        self._frames: dict[tuple[int, int], tuple[str | None, ...]] = {}
        self._resolved: dict[tuple[int, int], ResolvedStack] = {}
        self.stack_age_s = stack_age_s
        self._next_age = time.monotonic() + stack_age_s
        # The stacks deleted from the kernel at the last round and not captured since.
        self._forgotten: set[int] = set()
        self.types = CopiedTypes()
        self.budget = budget or TypesBudget()  # of the types resolution (budget.py)

    def bind(self, bpf: Any) -> None:
        """The loaded program whose maps hold layouts and stacks.  New stacks are announced on
        a ring a thread of its own serves (kernel.NewStackWatcher): they are named at once."""
        self._bpf = bpf
        drain_lru_batches()  # its page is made here, not by two threads at once
        self._watcher = kernel.NewStackWatcher(bpf, self._on_new_stack, self._after_new_stacks)

    def close(self) -> None:
        """Stop naming new stacks (before the program is unloaded); safe to call again."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def _on_new_stack(self, runtime: int, pid: int, stack_id: int) -> None:
        """Names a new stack's code objects while its writer still lives, and notes where its
        native leaf is: only what needs the process, and quickly (each process' memory opened
        once for the bunch of notes at hand); the leaf's symbol (an ELF file's symbol table: tens of
        milliseconds the first time) waits for the drain.  The frames' names are bound to the
        stack now, each code object checked against the writer's (an address may hold another
        code object than the one cached: issue 14).  Runs on the watcher's thread: the image's
        caches it fills are filled the same way by the session's thread when it comes first
        (single dict operations: either thread's entry for an address is a true reading)."""
        image = self.images.get(pid)
        if image is None:  # a child whose fork record is not applied yet: its parent's image
            image = next((i for i in list(self.images.values()) if i.runtime == runtime), None)
        if image is None:
            return
        raw = kernel.read_stack(self._bpf, stack_id)
        if raw is None:
            return
        self._raw[stack_id] = raw
        self._forgotten.discard(stack_id)
        readers = [pid, *self._readers(image, pid)]
        reader = remote_reads.Reader(readers, files=self._note_files)  # open for the bunch
        prints = self._note_prints.setdefault(pid, {})
        key = (id(image), stack_id)
        self._frames[key] = new_stack_names(image, readers, raw.codes, raw.instrs, reader, prints)
        self._resolved.pop(key, None)  # announced again (age_stacks): named again
        leaf_mapping(image, pid, raw.leaf_ip)

    def _after_new_stacks(self) -> None:
        """The notes at hand are named: close the memory files they read, and drain the LRU
        batches the reads filled, once for them all (see remote_reads.py: it waits for every
        CPU, milliseconds on a busy machine; once per note, it made naming fall seconds
        behind a start-up's burst of stacks).  The writers' fingerprints read for them go too:
        the next bunch's stacks were captured after these reads."""
        self._note_prints.clear()
        if self._note_files:
            remote_reads.close_files(self._note_files)
            drain_lru_batches()

    def age_stacks(self, now: float | None = None) -> None:
        """Every stack_age_s, delete the stacks known so far from the kernel's table, with the
        names they were given.  The kernel identifies a stack by its frames' code addresses
        and instructions, and an address can hold another code object later (one freed, a
        new one allocated there: generated code, templates compiled again): a stack through
        it then has the old stack's id and would keep the old names for good.  Deleted, the
        next capture of each stack stores it anew and announces it, and it is named again,
        each code object checked against the writer's memory (resolve.new_stack_names): a
        wrong name lasts one period at most.  It also keeps the table (PY_MAX_STACKS) for
        the stacks still in use: one that filled it would lose every new stack after.  The
        cost is one naming per stack in use per period.  The raw frames of a stack not
        captured again for a whole period are dropped then: no record can still carry it."""
        now = time.monotonic() if now is None else now
        if self._bpf is None or now < self._next_age:
            return
        self._next_age = now + self.stack_age_s
        for stack_id in self._forgotten:
            self._raw.pop(stack_id, None)
        known = list(self._raw)
        kernel.forget_stacks(self._bpf, known)
        self._forgotten = set(known)
        for cache in (self._frames, self._resolved):
            for key in [key for key in list(cache) if key[1] in self._forgotten]:
                cache.pop(key, None)

    def _readers(self, image: PythonImage, pid: int) -> list[int]:
        """Other processes of the same image, to read pre-fork objects from."""
        return [p for p, other in list(self.images.items()) if other is image and p != pid]

    # ---- membership ------------------------------------------------------------------------
    def adopt(self, pid: int) -> None:
        """A member that exists now (attach) or has just exec'd.  Right after an exec the
        loader maps libpython within a few milliseconds: wait for it briefly here, since a
        short script may fork before the session's next step."""
        self.pending.pop(pid, None)
        deadline = time.monotonic() + PENDING_S
        self._look(pid, deadline)
        for _ in range(EXEC_WAIT_TRIES):
            if pid not in self.pending:
                return
            time.sleep(EXEC_WAIT_S)
            del self.pending[pid]
            self._look(pid, deadline)

    def on_fork(self, parent: int, child: int) -> None:
        image = self.images.get(parent)
        if image is not None:
            self.images[child] = image
            if self._bpf is not None and not kernel.has_layout(self._bpf, child):
                # forked before we set the parent's layout
                kernel.set_layout(self._bpf, child, image)
            self.types.on_fork(parent, child)
        elif parent in self.pending:
            self.pending[child] = self.pending[parent]

    def on_exec(self, pid: int) -> None:
        self.images.pop(pid, None)  # the kernel dropped its layout at the exec
        self.adopt(pid)

    def on_exit(self, pid: int) -> None:
        """The member is gone: its type cache goes (after the drain that may hold its last
        copies)."""
        self.types.retire(pid)

    def forget(self, pid: int) -> None:
        """Drop what is kept for a member long gone (the agent, after its grace period)."""
        self.images.pop(pid, None)
        self.pending.pop(pid, None)
        self.types.forget(pid)

    def retry_pending(self) -> None:
        now = time.monotonic()
        for pid, deadline in list(self.pending.items()):
            del self.pending[pid]
            if now < deadline:
                self._look(pid, deadline)

    def _look(self, pid: int, deadline: float) -> None:
        with drained_reads():  # detect() reads the process' _PyRuntime (see remote_reads.py)
            found = detect(pid)
        if found.pending:
            self.pending[pid] = deadline
        elif found.notice is not None:
            if found.notice not in self.notices:
                self.notices.append(found.notice)
                sys.stderr.write(f"cowtrace: {found.notice}\n")  # once; tracing goes on
        elif found.image is not None:  # unbound (the agent): types only, no stacks
            if self._bpf is not None:
                kernel.set_layout(self._bpf, pid, found.image)
            self.images[pid] = found.image

    # ---- records ---------------------------------------------------------------------------
    def on_fault_events(self, records: np.ndarray, blocks: Any = None) -> FaultPythonStacks:
        """Fold copies with a Python stack into the writers and every copy of a CPython member
        into the copied types; returns the Python stack of each record (for --events).
        `blocks`: the allocator blocks the attribution found on the copied pages, when
        allocator probes ran: (record index, block address, block size), a row per (copy,
        block) overlap."""
        out = np.full(len(records), -1, np.int64)
        if len(records) == 0:
            return FaultPythonStacks(out, ())
        has_stack = (records["kind"] == KIND_COPY) & (records["pystack_id"] >= 0)
        categories = np.full(len(records), CATEGORIES.index("other"), np.int64)
        stacks: tuple[ResolvedStack, ...] = ()
        if has_stack.any():
            stacks = self._fold_stacks(records, has_stack, out, categories)
        self._copied_types(records, categories, blocks)
        return FaultPythonStacks(out, stacks)

    def _copied_types(self, records: np.ndarray, categories: np.ndarray, blocks: Any) -> None:
        """The objects on each copied page of a CPython member (copied_types.py), as many of
        the batch's pages as the time budget allows (budget.py); the rest are counted."""
        pids = records["pid"]
        python = (records["kind"] == KIND_COPY) & (records["addr"] != 0)
        python &= np.isin(pids, np.fromiter(self.images, np.int64, len(self.images)))
        candidates = np.flatnonzero(python)
        # By member and address: the budget's sample is then each member's share of the
        # batch, spread over its address space, whatever the ring's order (budget.py).
        candidates = candidates[np.lexsort((records["addr"][candidates], pids[candidates]))]
        examined = candidates[self.budget.plan(len(candidates))]
        self.types.skip(len(candidates) - len(examined))
        if len(examined):
            chosen = np.zeros(len(records), bool)
            chosen[examined] = True
            started = self.budget.clock()
            with drained_reads():  # pages and types read from the members (remote_reads.py)
                for pid in np.unique(pids[chosen]).tolist():
                    image = self.images[pid]
                    mine = chosen & (pids == pid)
                    self.types.add_copies(
                        image,
                        pid,
                        [pid, *self._readers(image, pid)],
                        records["addr"][mine],
                        categories[mine],
                        None if blocks is None else _pairs_of(blocks, mine),
                    )
            self.budget.spend(self.budget.clock() - started, len(examined))
        self.types.end_drain()

    def _fold_stacks(
        self, records: np.ndarray, has_stack: np.ndarray, out: np.ndarray, categories: np.ndarray
    ) -> tuple[ResolvedStack, ...]:
        """Each record's stack as an index (into the stacks returned) into `out`."""
        keys = (records["pid"].astype(np.int64) << 32) | records["pystack_id"].astype(np.int64)
        unique, inverse, counts = np.unique(
            keys[has_stack], return_inverse=True, return_counts=True
        )
        with drained_reads():  # names are read from the traced processes (remote_reads.py)
            resolved = [self._resolve(key >> 32, key & 0xFFFFFFFF) for key in unique.tolist()]
        stacks: list[ResolvedStack] = []
        positions, codes = [], []
        for stack, copies in zip(resolved, counts.tolist(), strict=True):
            if stack is None:
                positions.append(-1)
                codes.append(CATEGORIES.index("other"))
                continue
            self.writers.add(stack, copies)
            positions.append(len(stacks))
            stacks.append(stack)
            codes.append(CATEGORIES.index(stack.category))
        out[has_stack] = np.array(positions, np.int64)[inverse.reshape(-1)]
        categories[has_stack] = np.array(codes, np.int64)[inverse.reshape(-1)]
        return tuple(stacks)

    def _resolve(self, pid: int, stack_id: int) -> ResolvedStack | None:
        image = self.images.get(pid)
        if image is None or self._bpf is None:
            return None
        cached = self._resolved.get((id(image), stack_id))
        if cached is not None:
            return cached
        raw = self._raw.get(stack_id)
        if raw is None:
            raw = kernel.read_stack(self._bpf, stack_id)
            if raw is None:
                return None
            self._raw[stack_id] = raw
            self._forgotten.discard(stack_id)
        readers = [pid, *self._readers(image, pid)]
        frames: list[str] = []
        complete = True
        reader = remote_reads.Reader(readers, keep_open=True)
        try:
            noted = self._frames.get((id(image), stack_id))
            if noted is None:  # not seen by the watcher (it fell behind): new here
                noted = new_stack_names(image, readers, raw.codes, raw.instrs, reader)
            for code, instr, name in zip(raw.codes, raw.instrs, noted, strict=True):
                if name is None:  # nothing could be read when it was new: the cache, if any
                    name = frame_name(image, readers, code, instr, reader)
                if name is None:
                    complete = False
                    frames.append(f"<code 0x{code:x}>")
                elif name:
                    frames.append(name)
        finally:
            reader.close()
        if raw.flags & PYF_TRUNCATED:
            frames.append("…")
        leaf, module = leaf_name(image, pid, raw.leaf_ip)
        stack = ResolvedStack(tuple(frames), leaf, categorize(raw.flags, leaf, module))
        if complete:
            self._resolved[(id(image), stack_id)] = stack
        return stack


def python_lifecycle(python: PythonStacks, record: Any) -> None:
    """A lifecycle record (kernel/tracer.py ProcRecord) for the Python tracker."""
    if record.type == PE_FORK:
        python.on_fork(record.ppid, record.pid)
    elif record.type == PE_EXEC:
        python.on_exec(record.pid)
    elif record.type == PE_FREE:
        python.on_exit(record.pid)


def _pairs_of(blocks: Any, mine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (copy, block) rows of the records selected by `mine`, their record index renumbered
    to the position among those records."""
    rows, addrs, sizes = blocks
    keep = mine[rows]
    position = np.cumsum(mine) - 1
    return position[rows[keep]], addrs[keep], sizes[keep]
