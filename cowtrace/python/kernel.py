"""The BPF side of Python stacks: the per-process layout map, the captured stacks, and the
ring that announces each new stack.

Mirrors `struct py_proc`, `struct py_stack` and `struct py_new_stack` of bpf/python_stacks.h.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import select
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cowtrace.kernel.abi import PY_NEW_STACK_DTYPE, ring_record
from cowtrace.kernel.ringbuf import FixedRecordRing
from cowtrace.python.detect import PythonImage

NEW_STACK_POLL_MS = 100  # how long the watcher waits in the kernel between looks at its stop

PY_WINDOW = 64  # most bytes of each frame the kernel reads at once (code, previous, instr)
PY_CODE_BITS = 47  # a frame word: code address below, instruction (code units) above
PY_NO_INSTR = 0x1FFFF  # the instruction did not fit (or the frame had none)


@dataclass(frozen=True)
class RawStack:
    leaf_ip: int
    flags: int
    codes: tuple[int, ...]  # code object addresses, innermost first (shims included)
    # Per frame, the instruction pointer's distance from the code object's start in code
    # units (3.11/3.12: the last instruction started; 3.13: the current one), None if unknown.
    instrs: tuple[int | None, ...]


def split_frame(word: int) -> tuple[int, int | None]:
    """(code address, instruction in code units from the code object's start, or None)."""
    units = word >> PY_CODE_BITS
    return word & ((1 << PY_CODE_BITS) - 1), None if units == PY_NO_INSTR else units


def set_layout(bpf: Any, pid: int, image: PythonImage) -> None:
    """Tell the kernel where `pid`'s interpreter keeps its frames."""
    o = image.offsets
    table = bpf["py_procs"]
    leaf = table.Leaf()
    leaf.runtime = image.runtime
    read = (o.frame_code, o.frame_previous, o.frame_instr)
    window = min(read) & ~7
    size = max(read) + 8 - window
    if size > PY_WINDOW:
        raise ValueError(f"CPython {o.version}: frame fields too far apart for one read")
    values = {
        "runtime_interpreters_head": o.runtime_interpreters_head,
        "runtime_finalizing": o.runtime_finalizing,
        "runtime_gil": o.runtime_gil,
        "interp_gil_ptr": o.interp_gil_ptr,
        "gil_last_holder": o.gil_last_holder,
        "interp_threads_head": o.interp_threads_head,
        "interp_gc_collecting": o.interp_gc_collecting,
        "tstate_next": o.tstate_next,
        "tstate_native_thread_id": o.tstate_native_thread_id,
        "tstate_frame": o.tstate_frame,
        "cframe_current_frame": o.cframe_current_frame,
        "frame_window": window,
        "frame_code": o.frame_code - window,
        "frame_previous": o.frame_previous - window,
        "frame_instr": o.frame_instr - window,
        "frame_window_size": size,
    }
    for name, value in values.items():
        setattr(leaf, name, value)
    table[table.Key(pid)] = leaf
    # Threads that found no CPython here before look again (see py_generation in the BPF
    # program); only this process writes the counter.
    generation = bpf["py_generation"]
    key = generation.Key(0)
    generation[key] = generation.Leaf(generation[key].value + 1)


def forget(bpf: Any, pid: int) -> None:
    table = bpf["py_procs"]
    with contextlib.suppress(KeyError):
        del table[table.Key(pid)]


def has_layout(bpf: Any, pid: int) -> bool:
    table = bpf["py_procs"]
    try:
        table[table.Key(pid)]
    except KeyError:
        return False
    return True


@functools.cache
def _lookup_elem() -> Any:
    """libbcc's bpf_lookup_elem called as a Python C function (ctypes.PyDLL: the GIL is kept
    through the system call, a few microseconds)."""
    from bcc.libbcc import lib  # bcc only where a program is loaded

    function = ctypes.PyDLL(lib._name).bpf_lookup_elem
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


@functools.cache
def _delete_elem() -> Any:
    """libbcc's bpf_delete_elem, keeping the GIL as _lookup_elem does."""
    from bcc.libbcc import lib

    function = ctypes.PyDLL(lib._name).bpf_delete_elem
    function.argtypes = [ctypes.c_int, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


def forget_stacks(bpf: Any, stack_ids: list[int]) -> None:
    """Delete these stacks from the kernel's table: the next capture of each stores it again
    and announces it on the ring, as a new stack (python/tracker.py, age_stacks)."""
    table = bpf["py_stacks"]
    delete = _delete_elem()
    for stack_id in stack_ids:
        key = table.Key(stack_id)
        delete(table.map_fd, ctypes.byref(key))  # an entry already gone: nothing to do


def read_stack(bpf: Any, stack_id: int) -> RawStack | None:
    """A captured stack, looked up without letting go of the GIL: the watcher's thread reads
    one per new stack, and each time it let go it waited for the session's thread to hand
    the GIL back (NewStackWatcher)."""
    table = bpf["py_stacks"]
    key, leaf = table.Key(stack_id), table.Leaf()
    if _lookup_elem()(table.map_fd, ctypes.byref(key), ctypes.byref(leaf)) != 0:
        return None
    depth = min(int(leaf.depth), len(leaf.code))
    frames = [split_frame(int(word)) for word in leaf.code[:depth]]
    return RawStack(
        leaf_ip=int(leaf.leaf_ip),
        flags=int(leaf.flags),
        codes=tuple(code for code, _ in frames),
        instrs=tuple(instr for _, instr in frames),
    )


class NewStackWatcher:
    """The `py_new_stacks` ring, served by a thread of its own: each new stack is handed to
    `on_note(runtime, pid, stack_id)` within milliseconds, whatever the session's loop is
    doing, and `after_notes()` is called after each bunch of them.  That loop can be busy
    for a second at a time (a start-up's map snapshots and ELF files, the first symbol
    tables), and a stack's code objects can only be read while a process of its family
    lives: a pool worker that wrote and exited during such a stretch kept `<code 0x...>`
    frames.

    The thread keeps the GIL while it works: the ring is read as whole stretches of records
    from its mapping (ringbuf.py), not through libbpf's consumer, which calls back into
    Python once per record, the stack is looked up and the code objects read by calls that
    keep the GIL (read_stack, remote_reads.MemoryFile): each time a thread lets go of it
    while the session's thread computes, it waits up to the interpreter's switch interval
    (5 ms) to get it back.  It lets go in select(2), when nothing is pending."""

    def __init__(
        self,
        bpf: Any,
        on_note: Callable[[int, int, int], None],
        after_notes: Callable[[], None],
    ) -> None:
        table = bpf["py_new_stacks"]
        self._fd = table.map_fd
        self._ring: FixedRecordRing | None = FixedRecordRing(
            self._fd, table.max_entries, ring_record(PY_NEW_STACK_DTYPE)
        )
        self._on_note = on_note
        self._after_notes = after_notes
        self.error: str | None = None  # the first failure, told once on stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cowtrace-new-stacks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                select.select([self._fd], [], [], NEW_STACK_POLL_MS / 1000)
            except (OSError, ValueError):  # the program was unloaded under us
                return
            self._serve()

    def _serve(self) -> None:
        if self._ring is None:
            return
        notes = self._ring.drain()
        if not len(notes):
            return
        try:
            for runtime, pid, stack_id in zip(
                notes["runtime"].tolist(),
                notes["pid"].tolist(),
                notes["stack_id"].tolist(),
                strict=True,
            ):
                self._on_note(runtime, pid, stack_id)
        except Exception as error:  # the thread goes on: the drain names what it misses
            if self.error is None:
                self.error = f"{type(error).__name__}: {error}"
                sys.stderr.write(f"cowtrace: naming new Python stacks: {self.error}\n")
        finally:
            self._after_notes()

    def close(self) -> None:
        """Stop the thread, hand over what is left in the ring, release the ring."""
        if self._ring is None:
            return
        self._stop.set()
        self._thread.join()
        self._serve()
        self._ring.close()
        self._ring = None
