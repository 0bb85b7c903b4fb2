"""Build-time generator of cowtrace/python/offsets_table.json: CPython struct offsets.

CPython 3.11 and 3.12 publish no offsets, so cowtrace ships a table.  It is made here by
compiling a tiny C program with offsetof() against each interpreter's own headers (the internal
ones, with Py_BUILD_CORE), so the numbers are the compiler's, not transcribed.  3.13 is generated
too: its process publishes the same facts in _Py_DebugOffsets, and the table lets a test check
the two agree.

Usage: python tools/gen_offsets.py PYTHON... > cowtrace/python/offsets_table.json
(each PYTHON an interpreter binary with its headers installed: pyenv builds, python3.X-dev);
`make python-offsets` runs it.  A build-time tool: it is not part of the installed package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Unified names (those of 3.13's _Py_DebugOffsets where it has one); -1 means "not in this
# version".  FRAME_VIA_CFRAME: 3.11/3.12 reach the current frame through tstate->cframe.
_PROGRAM = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_frame.h"
#include "internal/pycore_gc.h"
#include "internal/pycore_gil.h"

#define F(name, value) printf("\"%s\": %ld,\n", name, (long)(value))
int main(void) {
    printf("{\n");
    F("py_version_hex", PY_VERSION_HEX);
    F("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
    F("runtime_finalizing", offsetof(_PyRuntimeState, _finalizing));
    F("interp_threads_head", offsetof(PyInterpreterState, threads.head));
    F("interp_gc_collecting",
      offsetof(PyInterpreterState, gc) + offsetof(struct _gc_runtime_state, collecting));
    F("gil_last_holder", offsetof(struct _gil_runtime_state, last_holder));
#if PY_VERSION_HEX < 0x030C0000
    F("runtime_gil", offsetof(_PyRuntimeState, ceval.gil));
    F("interp_gil_ptr", -1);
#else
    F("runtime_gil", -1);
    F("interp_gil_ptr", offsetof(PyInterpreterState, ceval.gil));
#endif
    F("tstate_next", offsetof(PyThreadState, next));
    F("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#if PY_VERSION_HEX < 0x030D0000
    F("tstate_frame", offsetof(PyThreadState, cframe));
    F("cframe_current_frame", offsetof(_PyCFrame, current_frame));
    F("frame_code", offsetof(_PyInterpreterFrame, f_code));
    F("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#else
    F("tstate_frame", offsetof(PyThreadState, current_frame));
    F("cframe_current_frame", -1);
    F("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    F("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#endif
    F("frame_previous", offsetof(_PyInterpreterFrame, previous));
    F("code_filename", offsetof(PyCodeObject, co_filename));
    F("code_name", offsetof(PyCodeObject, co_name));
    F("code_qualname", offsetof(PyCodeObject, co_qualname));
    F("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    F("code_linetable", offsetof(PyCodeObject, co_linetable));
    F("code_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    F("bytes_size", offsetof(PyBytesObject, ob_base.ob_size));
    F("bytes_sval", offsetof(PyBytesObject, ob_sval));
    F("unicode_state", offsetof(PyASCIIObject, state));
    F("unicode_length", offsetof(PyASCIIObject, length));
    F("unicode_ascii_size", sizeof(PyASCIIObject));
    F("unicode_compact_size", sizeof(PyCompactUnicodeObject));
    printf("\"end\": 0\n}\n");
    return 0;
}
"""


def include_dir(python: str) -> str:
    """The interpreter's own header directory (sysconfig of that interpreter)."""
    code = "import sysconfig; print(sysconfig.get_paths()['include'])"
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def offsets_of(python: str) -> dict[str, int]:
    """Compile and run the offsetof() program against `python`'s headers."""
    with tempfile.TemporaryDirectory(prefix="cowtrace-offsets-") as tmp:
        source = Path(tmp) / "offsets.c"
        binary = Path(tmp) / "offsets"
        source.write_text(_PROGRAM)
        include = include_dir(python)
        subprocess.run(["gcc", "-w", f"-I{include}", str(source), "-o", str(binary)], check=True)
        out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    values = json.loads(out)
    values.pop("end")
    return values


def main(argv: list[str]) -> int:
    table: dict[str, dict[str, int]] = {}
    for python in argv:
        values = offsets_of(python)
        hexv = values["py_version_hex"]
        key = f"{hexv >> 24}.{(hexv >> 16) & 0xFF}"
        if key in table and {k: v for k, v in table[key].items() if k != "py_version_hex"} != {
            k: v for k, v in values.items() if k != "py_version_hex"
        }:
            raise SystemExit(f"{python}: offsets differ from another {key} build")
        table.setdefault(key, values)
    json.dump(table, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
