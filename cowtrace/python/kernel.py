"""The BPF side of Python stacks: the per-process layout map and the captured stacks.

Mirrors `struct py_proc` and `struct py_stack` of bpf/python_stacks.h.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from cowtrace.python.detect import PythonImage

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


def read_stack(bpf: Any, stack_id: int) -> RawStack | None:
    table = bpf["py_stacks"]
    try:
        leaf = table[table.Key(stack_id)]
    except KeyError:
        return None
    depth = min(int(leaf.depth), len(leaf.code))
    frames = [split_frame(int(word)) for word in leaf.code[:depth]]
    return RawStack(
        leaf_ip=int(leaf.leaf_ip),
        flags=int(leaf.flags),
        codes=tuple(code for code, _ in frames),
        instrs=tuple(instr for _, instr in frames),
    )
