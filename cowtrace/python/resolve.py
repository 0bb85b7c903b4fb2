"""Names for what the kernel captured: (code object, instruction) -> `function (file:line)`,
the line being executed; leaf ip -> native function.  Each code object is read once per
interpreter image (PythonImage caches its name and line table), each line computed once per
(code object, instruction).

A code object is read from the writer if it is still alive, else from any other process of the
same image (pre-fork code objects sit at the same address in the whole family).  What is read is
checked (the object's type must be named "code"), so a stale address yields no frame rather
than a wrong one.
"""

from __future__ import annotations

import os
import struct

from cowtrace.host import procmaps, remote_reads
from cowtrace.host.elf import load as load_symbols
from cowtrace.host.rootfs import host_path
from cowtrace.python.detect import CodeInfo, PythonImage
from cowtrace.python.linetable import CODE_UNIT, LineTable

OB_TYPE, TP_NAME = 8, 24  # PyObject.ob_type, PyTypeObject.tp_name: fixed on x86-64 3.11-3.13
MAX_STRING = 1024
MAX_LINETABLE = 4 << 20  # a location table larger than this is taken for garbage
SHIM_FILENAMES = {"<shim>"}  # 3.12: "<interpreter trampoline>", the C-stack entry frames


def _unicode(reader: remote_reads.Reader, image: PythonImage, addr: int) -> str | None:
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


def code_info(
    image: PythonImage, pids: list[int], addr: int, reader: remote_reads.Reader | None = None
) -> CodeInfo | None:
    """The code object at `addr` (name, file, line table); CodeInfo.name "" for no code object
    or a C-stack shim (the frame is dropped); None when no process can be read any more.
    Cached in the image (None is not cached).  `reader`: one over `pids` kept open for a
    burst of names (else each read opens the processes' memory anew)."""
    if addr in image.code_infos:
        return image.code_infos[addr]
    reader = reader or remote_reads.Reader(pids)
    o = image.offsets
    type_addr = reader.u64(addr + OB_TYPE)
    tp_name = reader.u64(type_addr + TP_NAME) if type_addr else None
    if tp_name is None:
        return None  # unreadable now (every process gone): not cached
    info = CodeInfo("", "", 0, None)
    if reader.cstring(tp_name, 16) == "code":
        qualname = _pointer_string(reader, image, addr + o.code_qualname)
        filename = _pointer_string(reader, image, addr + o.code_filename)
        first = reader.i32(addr + o.code_firstlineno)
        if (
            qualname is not None
            and filename is not None
            and first is not None
            and filename not in SHIM_FILENAMES
        ):
            info = CodeInfo(qualname, filename, first, _line_table(reader, image, addr, first))
    image.code_infos[addr] = info
    return info


def _line_table(
    reader: remote_reads.Reader, image: PythonImage, addr: int, first: int
) -> LineTable | None:
    """The code object's co_linetable, decoded; None when unreadable or malformed (its frames
    then show the first line)."""
    o = image.offsets
    table = reader.u64(addr + o.code_linetable)
    size = reader.u64(table + o.bytes_size) if table else None
    if size is None or not 0 <= size <= MAX_LINETABLE:
        return None
    data = reader.read(table + o.bytes_sval, size) if size else b""
    if data is None:
        return None
    try:
        return LineTable.parse(data, first)
    except ValueError:
        return None


def frame_name(
    image: PythonImage,
    pids: list[int],
    addr: int,
    instr: int | None,
    reader: remote_reads.Reader | None = None,
) -> str | None:
    """`qualname (file:line)` of a frame running the code object at `addr`, `instr` code units
    from the object's start (the kernel's capture), `line` the line of that instruction; the
    first line when the instruction is unknown or has no line.  "" for a frame to drop, None
    when nothing can be read any more.  Cached per (code object, instruction); `reader` as in
    code_info."""
    key = (addr, instr)
    name = image.frame_names.get(key)
    if name is not None:
        return name
    info = code_info(image, pids, addr, reader)
    if info is None:
        return None
    name = info.frame(line_of(info, image.offsets.code_code_adaptive, instr))
    image.frame_names[key] = name
    return name


def line_of(info: CodeInfo, code_adaptive: int, instr: int | None) -> int:
    """The line being executed: the instruction's byte offset into the bytecode is its
    distance from the code object's start less the bytecode's place in the object (negative
    for a 3.11/3.12 frame whose first instruction has not started: the first line)."""
    if instr is None or info.lines is None:
        return info.firstlineno
    line = info.lines.line_at(instr * CODE_UNIT - code_adaptive)
    return info.firstlineno if line is None else line


def _pointer_string(reader: remote_reads.Reader, image: PythonImage, field: int) -> str | None:
    target = reader.u64(field)
    return _unicode(reader, image, target) if target else None


def leaf_name(image: PythonImage, pid: int, ip: int) -> tuple[str, str]:
    """(function, module basename) of a native address; function is "module+0xoffset" when the
    file has no symbol for it (stripped static functions)."""
    if ip in image.leaf_names:
        return image.leaf_names[ip]
    found = leaf_mapping(image, pid, ip)
    if found is None:
        function, module = f"0x{ip:x}", ""
    else:
        mapping, rooted = found
        module = os.path.basename(mapping.path) or "[anon]"
        function = None
        symbols = load_symbols(rooted) if mapping.path.startswith("/") else None
        if symbols is not None:
            bias = mapping.start - mapping.offset - symbols.min_vaddr
            if not symbols.position_independent:
                bias = 0
            function = symbols.function_at(ip - bias)
        if function is None:
            function = f"{module}+0x{ip - (mapping.start - mapping.offset):x}"
    image.leaf_names[ip] = (function, module)
    return function, module


def leaf_mapping(image: PythonImage, pid: int, ip: int) -> tuple[procmaps.MapLine, str] | None:
    """The mapping holding a native address and the path cowtrace opens for its file, kept per
    address in the image: found while the process lives (its /proc/PID/maps, its root), they
    name the leaf later (leaf_name), when the file's symbols are read."""
    if ip not in image.leaf_mappings:
        mapping = _mapping_of(image, pid, ip)
        image.leaf_mappings[ip] = (
            None if mapping is None else (mapping, host_path(pid, mapping.path))
        )
    return image.leaf_mappings[ip]


def _mapping_of(image: PythonImage, pid: int, ip: int) -> procmaps.MapLine | None:
    """From the maps last read for the image, else (a library mapped since) the process'
    own, read now and kept.  Only on a miss: /proc/PID/maps takes a millisecond to read,
    and every new stack's leaf asks."""
    for mapping in image.maps:
        if mapping.start <= ip < mapping.end:
            return mapping
    maps = procmaps.read(pid)
    for mapping in maps:
        if mapping.start <= ip < mapping.end:
            image.maps = maps
            return mapping
    return None
