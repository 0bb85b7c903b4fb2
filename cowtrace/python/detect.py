"""Is a member a CPython interpreter, which version, and where is its `_PyRuntime`?

`_PyRuntime` is an exported symbol of the python binary (statically linked, as Debian's) or of
libpython (shared, as pyenv's): its address is the symbol plus the file's load bias, read from
/proc/PID/maps.  The version comes from the `Py_Version` constant (3.11+) of the same file.
Both paths are the process' own (a container's): the files are opened through /proc/PID/root
(host/rootfs.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from cowtrace.host import procmaps, remote_reads
from cowtrace.host.elf import ElfImage
from cowtrace.host.elf import load as load_symbols
from cowtrace.host.rootfs import root_prefix
from cowtrace.python.linetable import LineTable
from cowtrace.python.offsets import (
    DEBUG_OFFSETS_SIZE,
    PyOffsets,
    parse_debug_offsets,
    shipped_versions,
    table_offsets,
)

_LIBPYTHON = re.compile(r"libpython3\.\d+")


@dataclass(frozen=True)
class CodeInfo:
    """A code object read from the target: what names its frames.  `name` "" marks no code
    object (or a C-stack shim): its frames are dropped.  `fingerprint`: what tells it from
    another object later allocated at its address (resolve.fingerprint); `names`: its frames'
    names by instruction, kept with it, so they go when another object takes the address."""

    name: str  # co_qualname
    filename: str
    firstlineno: int
    lines: LineTable | None  # co_linetable decoded; None: unreadable, frames show firstlineno
    fingerprint: tuple[int, ...] = ()
    names: dict[int | None, str] = field(default_factory=dict, compare=False, repr=False)

    def frame(self, line: int) -> str:
        return f"{self.name} ({self.filename}:{line})" if self.name else ""


@dataclass
class PythonImage:
    """One interpreter in memory, shared by a process and the children it forks (same
    addresses), so caches of names live here."""

    pid: int  # the process it was detected in
    version: str
    offsets: PyOffsets
    runtime: int  # address of _PyRuntime
    path: str  # the file holding _PyRuntime
    # by address: the object last read there (resolve.code_info checks it on new stacks)
    code_infos: dict[int, CodeInfo] = field(default_factory=dict)
    leaf_names: dict[int, tuple[str, str]] = field(default_factory=dict)
    leaf_mappings: dict[int, tuple[procmaps.MapLine, str] | None] = field(default_factory=dict)
    maps: list[procmaps.MapLine] = field(default_factory=list)


@dataclass(frozen=True)
class Detection:
    image: PythonImage | None = None
    notice: str | None = None  # one line for the user (a version without offsets)
    pending: bool = False  # looks like Python but libpython is not mapped yet: ask again


def _bias(maps: list[procmaps.MapLine], path: str, min_vaddr: int, pie: bool) -> int | None:
    if not pie:
        return 0
    starts = [m.start - m.offset for m in maps if m.path == path]
    return min(starts) - min_vaddr if starts else None


def _version(symbols: ElfImage) -> str | None:
    """From the `Py_Version` constant (3.11+), read from the file."""
    value = symbols.objects.get("Py_Version")
    data = symbols.read(value, 4) if value is not None else None
    if data is None:
        return None
    hexv = int.from_bytes(data, "little")
    return f"{hexv >> 24}.{(hexv >> 16) & 0xFF}"


def _version_from_name(path: str) -> str | None:
    found = re.search(r"python(3\.\d+)", os.path.basename(path))
    return found.group(1) if found else None


def detect(pid: int) -> Detection:
    """Look at `pid` now."""
    maps = procmaps.read(pid)
    if not maps:
        return Detection()
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return Detection()
    root = root_prefix(pid)
    candidates = [exe] + sorted({m.path for m in maps if _LIBPYTHON.search(m.path)})
    for path in candidates:
        symbols = load_symbols(root + path)
        if symbols is None or "_PyRuntime" not in symbols.objects:
            continue
        bias = _bias(maps, path, symbols.min_vaddr, symbols.position_independent)
        if bias is None:
            continue
        runtime = bias + symbols.objects["_PyRuntime"]
        version = _version(symbols) or _version_from_name(path)
        return _with_offsets(pid, version, runtime, path, maps)
    exe_symbols = load_symbols(root + exe)
    links_libpython = exe_symbols is not None and any(
        _LIBPYTHON.search(name) for name in exe_symbols.needed
    )
    if links_libpython and not any(_LIBPYTHON.search(m.path) for m in maps):
        return Detection(pending=True)  # just exec'd: the loader has not mapped libpython yet
    return Detection()


def _with_offsets(
    pid: int, version: str | None, runtime: int, path: str, maps: list[procmaps.MapLine]
) -> Detection:
    offsets = None
    if version is not None and tuple(map(int, version.split("."))) >= (3, 13):
        blob = remote_reads.read(pid, runtime, DEBUG_OFFSETS_SIZE)
        offsets = parse_debug_offsets(blob) if blob else None
    if offsets is None and version is not None:
        offsets = table_offsets(version)
    if offsets is None:
        shipped = ", ".join(shipped_versions())
        return Detection(
            notice=f"pid {pid} runs CPython {version or '(unknown version)'}: cowtrace has no "
            f"struct offsets for it (it has {shipped}), so no Python stacks for it"
        )
    image = PythonImage(
        pid=pid,
        version=version or offsets.version,
        offsets=offsets,
        runtime=runtime,
        path=path,
        maps=maps,
    )
    return Detection(image=image)
