"""Names for what the kernel captured: code objects -> `function (file:line)`, leaf ip ->
native function.  Each code object is read once per interpreter image (PythonImage caches).

A code object is read from the writer if it is still alive, else from any other process of the
same image (pre-fork code objects sit at the same address in the whole family).  What is read is
checked (the object's type must be named "code"), so a stale address yields no frame rather
than a wrong one.
"""

from __future__ import annotations

import os
import struct

from cowtrace.python import procmem
from cowtrace.python.detect import PythonImage
from cowtrace.python.elf import load_symbols

OB_TYPE, TP_NAME = 8, 24  # PyObject.ob_type, PyTypeObject.tp_name: fixed on x86-64 3.11-3.13
MAX_STRING = 1024
SHIM_FILENAMES = {"<shim>"}  # 3.12: "<interpreter trampoline>", the C-stack entry frames


def _unicode(reader: procmem.Reader, image: PythonImage, addr: int) -> str | None:
    o = image.offsets
    head = reader.read(addr, o.unicode_compact_size)
    if head is None:
        return None
    length = struct.unpack_from("<q", head, o.unicode_length)[0]
    state = struct.unpack_from("<I", head, o.unicode_state)[0]
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not compact or kind not in (1, 2, 4) or not 0 <= length <= MAX_STRING:
        return None
    start = addr + (o.unicode_ascii_size if ascii_ else o.unicode_compact_size)
    data = reader.read(start, length * kind) if length else b""
    if data is None:
        return None
    encoding = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    return data.decode(encoding, errors="replace")


def code_name(image: PythonImage, pids: list[int], addr: int) -> str | None:
    """`qualname (file:firstline)` of the code object at `addr`; "" for no code object or a
    C-stack shim (the frame is dropped); None when no process can be read any more.  Cached in
    the image (None is not cached)."""
    if addr in image.code_names:
        return image.code_names[addr]
    reader = procmem.Reader(pids)
    o = image.offsets
    type_addr = reader.u64(addr + OB_TYPE)
    tp_name = reader.u64(type_addr + TP_NAME) if type_addr else None
    if tp_name is None:
        return None  # unreadable now (every process gone): not cached
    name = ""
    if reader.cstring(tp_name, 16) == "code":
        qualname = _pointer_string(reader, image, addr + o.code_qualname)
        filename = _pointer_string(reader, image, addr + o.code_filename)
        line = reader.i32(addr + o.code_firstlineno)
        if qualname is not None and filename is not None and filename not in SHIM_FILENAMES:
            name = f"{qualname} ({filename}:{line})"
    image.code_names[addr] = name
    return name


def _pointer_string(reader: procmem.Reader, image: PythonImage, field: int) -> str | None:
    target = reader.u64(field)
    return _unicode(reader, image, target) if target else None


def leaf_name(image: PythonImage, pid: int, ip: int) -> tuple[str, str]:
    """(function, module basename) of a native address; function is "module+0xoffset" when the
    file has no symbol for it (stripped static functions)."""
    if ip in image.leaf_names:
        return image.leaf_names[ip]
    mapping = _mapping_of(image, pid, ip)
    if mapping is None:
        function, module = f"0x{ip:x}", ""
    else:
        module = os.path.basename(mapping.path) or "[anon]"
        function = None
        symbols = load_symbols(mapping.path) if mapping.path.startswith("/") else None
        if symbols is not None:
            bias = mapping.start - mapping.offset - symbols.min_vaddr
            if not symbols.position_independent:
                bias = 0
            function = symbols.function_at(ip - bias)
        if function is None:
            function = f"{module}+0x{ip - (mapping.start - mapping.offset):x}"
    image.leaf_names[ip] = (function, module)
    return function, module


def _mapping_of(image: PythonImage, pid: int, ip: int) -> procmem.Mapping | None:
    for maps in (image.maps, procmem.read_maps(pid)):
        for mapping in maps:
            if mapping.start <= ip < mapping.end:
                if maps is not image.maps:
                    image.maps = maps
                return mapping
    return None
