"""Just enough ELF64 reading to know which shared libraries a program asks for (DT_NEEDED) and
where the loader would find them.

Why not `ldd`: it runs the program's loader, and binutils may not be installed where cowtrace
runs.  Why only DT_NEEDED of the program itself (not the whole tree): an allocator that replaces
malloc (jemalloc, tcmalloc) is linked by the program or preloaded; a library pulling one in on
its own is rare, and the exec-time scan of the process' mappings catches it (uprobes.py).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
SHT_DYNAMIC = 6
DT_NULL, DT_NEEDED, DT_RPATH, DT_RUNPATH = 0, 1, 15, 29
LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)


def _dynamic_entries(path: str) -> tuple[list[str], list[str]]:
    """(NEEDED names, RUNPATH/RPATH directories) of an ELF64 little-endian file; empty lists
    when it is not one or has no dynamic section (a static program)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return [], []
    if data[:4] != ELF_MAGIC or data[4] != 2 or data[5] != 1:
        return [], []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for index in range(shnum):
        base = shoff + index * shentsize
        if base + 64 > len(data):
            return [], []
        _name, kind, _flags, _addr, offset, size, link = struct.unpack_from("<IIQQQQI", data, base)
        sections.append((kind, offset, size, link))
    needed: list[str] = []
    paths: list[str] = []
    for kind, offset, size, link in sections:
        if kind != SHT_DYNAMIC or link >= len(sections):
            continue
        strtab_offset = sections[link][1]
        for entry in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, entry)
            if tag == DT_NULL:
                break
            if tag in (DT_NEEDED, DT_RPATH, DT_RUNPATH):
                start = strtab_offset + value
                text = data[start : data.index(b"\0", start)].decode(errors="replace")
                (needed if tag == DT_NEEDED else paths).append(text)
    try:
        origin = os.path.dirname(os.path.realpath(path))
    except OSError:  # /proc/PID/exe of a process exiting meanwhile: its link reads ENOENT
        origin = os.path.dirname(path)
    dirs = [
        d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
        for entry in paths
        for d in entry.split(":")
        if d
    ]
    return needed, dirs


def needed_libraries(path: str) -> list[str]:
    """Paths of the libraries `path` names in DT_NEEDED that could be found on this system."""
    needed, dirs = _dynamic_entries(path)
    env_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found = []
    for name in needed:
        if os.sep in name:
            if os.path.exists(name):
                found.append(name)
            continue
        for directory in (*dirs, *env_dirs, *LIBRARY_DIRS):
            candidate = os.path.join(directory, name)
            if os.path.exists(candidate):
                found.append(candidate)
                break
    return found
