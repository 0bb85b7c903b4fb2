"""CPython struct offsets the kernel's frame walk and the user-space resolver need.

3.11 and 3.12 publish nothing, so their offsets come from offsets_table.json, generated at build
time from each version's own headers by tools/gen_offsets.py.  3.13 publishes them itself in
`_Py_DebugOffsets`, the first member of `_PyRuntime`: those are read from the traced process,
so a 3.13 build with a different layout (another patch release, a custom build) still works.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources

DEBUG_COOKIE = b"xdebugpy"
DEBUG_OFFSETS_SIZE = 8 + 8 * 77  # the 3.13 _Py_DebugOffsets: a cookie, then 77 uint64 fields


@dataclass(frozen=True)
class PyOffsets:
    """Offsets in bytes (-1: the field does not exist in this version)."""

    version: str  # "3.12"
    runtime_interpreters_head: int
    runtime_finalizing: int
    runtime_gil: int  # 3.11: the GIL state lives in _PyRuntime
    interp_gil_ptr: int  # 3.12+: the interpreter points to its GIL state
    gil_last_holder: int
    interp_threads_head: int
    interp_gc_collecting: int
    tstate_next: int
    tstate_native_thread_id: int
    tstate_frame: int  # 3.11/3.12: tstate->cframe; 3.13: tstate->current_frame
    cframe_current_frame: int  # -1 when tstate_frame is the frame itself
    frame_code: int
    frame_previous: int
    frame_instr: int  # 3.11/3.12: prev_instr (last started); 3.13: instr_ptr (current)
    code_filename: int
    code_name: int
    code_qualname: int
    code_firstlineno: int
    code_linetable: int  # a bytes object: the 3.11+ location table (PEP 657)
    code_code_adaptive: int  # the bytecode, inline in the code object
    bytes_size: int
    bytes_sval: int
    unicode_state: int
    unicode_length: int
    unicode_ascii_size: int
    unicode_compact_size: int


_FIELDS = [f.name for f in fields(PyOffsets) if f.name != "version"]


@cache
def _table() -> dict[str, dict[str, int]]:
    text = (resources.files("cowtrace.python") / "offsets_table.json").read_text()
    return json.loads(text)


def shipped_versions() -> list[str]:
    return sorted(_table())


def table_offsets(version: str) -> PyOffsets | None:
    """The shipped offsets of a minor version ("3.11"), or None when cowtrace has none."""
    entry = _table().get(version)
    if entry is None:
        return None
    return PyOffsets(version=version, **{name: entry[name] for name in _FIELDS})


def parse_debug_offsets(blob: bytes) -> PyOffsets | None:
    """3.13's _Py_DebugOffsets (the first bytes of _PyRuntime), or None if `blob` is not one.

    The struct's own layout changes between minor versions; this reads the 3.13 one."""
    if len(blob) < DEBUG_OFFSETS_SIZE or not blob.startswith(DEBUG_COOKIE):
        return None
    words = struct.unpack_from("<77Q", blob, 8)
    version_hex = words[0]
    major, minor = version_hex >> 24, (version_hex >> 16) & 0xFF
    if (major, minor) != (3, 13):
        return None
    (
        _version,
        _free_threaded,
        _rt_size,
        rt_finalizing,
        rt_interpreters_head,
        _is_size,
        _is_id,
        _is_next,
        is_threads_head,
        is_gc,
        _is_modules,
        _is_sysdict,
        _is_builtins,
        is_ceval_gil,
        is_gil_state,
        _is_gil_enabled,
        _is_gil_locked,
        is_gil_holder,
        _ts_size,
        _ts_prev,
        ts_next,
        _ts_interp,
        ts_current_frame,
        _ts_thread_id,
        ts_native_thread_id,
        _ts_datastack,
        _ts_status,
        _fr_size,
        fr_previous,
        fr_executable,
        fr_instr_ptr,
        _fr_localsplus,
        _fr_owner,
        _co_size,
        co_filename,
        co_name,
        co_qualname,
        co_linetable,
        co_firstlineno,
        *rest,
    ) = words
    co_code_adaptive = rest[3]  # after argcount, localsplusnames, localspluskinds
    # rest: argcount .. co_code_adaptive (4), pyobject (2), type (4), tuple (3), list (3),
    # dict (3), float (2), long (3), bytes (3), unicode (4), gc (2)
    unicode = rest[4 + 2 + 4 + 3 + 3 + 3 + 2 + 3 + 3 :][:4]
    gc = rest[4 + 2 + 4 + 3 + 3 + 3 + 2 + 3 + 3 + 4 :][:2]
    _b_size, b_ob_size, b_ob_sval = rest[4 + 2 + 4 + 3 + 3 + 3 + 2 + 3 :][:3]
    _u_size, u_state, u_length, u_ascii_size = unicode
    _gc_size, gc_collecting = gc
    return PyOffsets(
        version="3.13",
        runtime_interpreters_head=rt_interpreters_head,
        runtime_finalizing=rt_finalizing,
        runtime_gil=-1,
        interp_gil_ptr=is_ceval_gil,
        # Published from the interpreter's start; the kernel reads it behind ceval.gil.
        gil_last_holder=is_gil_holder - is_gil_state,
        interp_threads_head=is_threads_head,
        interp_gc_collecting=is_gc + gc_collecting,
        tstate_next=ts_next,
        tstate_native_thread_id=ts_native_thread_id,
        tstate_frame=ts_current_frame,
        cframe_current_frame=-1,
        frame_code=fr_executable,
        frame_previous=fr_previous,
        frame_instr=fr_instr_ptr,
        code_filename=co_filename,
        code_name=co_name,
        code_qualname=co_qualname,
        code_firstlineno=co_firstlineno,
        code_linetable=co_linetable,
        code_code_adaptive=co_code_adaptive,
        bytes_size=b_ob_size,
        bytes_sval=b_ob_sval,
        unicode_state=u_state,
        unicode_length=u_length,
        unicode_ascii_size=u_ascii_size,
        # PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject (3.12+).
        unicode_compact_size=u_ascii_size + 16,
    )
