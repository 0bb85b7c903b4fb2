"""Names for what the kernel captured: (code object, instruction) -> `function (file:line)`,
the line being executed; leaf ip -> native function.  Each code object is read once per
interpreter image (PythonImage caches its name and line table by address), each line computed
once per (code object, instruction).

A code object is read from the writer if it is still alive, else from any other process of the
same image (pre-fork code objects sit at the same address in the whole family).  What is read is
checked (the object's type must be named "code"), so a stale address yields no frame rather
than a wrong one.  An address can hold another code object later (the first freed, another
allocated there: a module's code after its import, generated code, a worker's own code after
the fork), so a stack seen for the first time checks each cached object against the writer's
by a fingerprint (code_info's `check`): one small read per frame, once per new stack.
"""

from __future__ import annotations

import os
import struct

from cowtrace.host import procmaps, remote_reads
from cowtrace.host.elf import load as load_symbols
from cowtrace.host.rootfs import host_path
from cowtrace.python.detect import CodeInfo, PythonImage
from cowtrace.python.linetable import CODE_UNIT, LineTable

# PyObject.ob_type, PyVarObject.ob_size, PyTypeObject.tp_name: fixed on x86-64 3.11-3.13
OB_TYPE, OB_SIZE, TP_NAME = 8, 16, 24
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


def fingerprint(
    reader: remote_reads.Reader, image: PythonImage, addr: int
) -> tuple[int, ...] | None:
    """What tells the code object at `addr` from another one later allocated there: its type,
    size (code units), first line and the addresses of its file name, qualified name and line
    table, all from one read of its head (ob_type to co_linetable: 136 bytes on 3.11-3.13).
    None when `reader` cannot read it.  Another object with every one of these equal (same
    size and first line, and its three strings recycled at the same addresses) goes
    unnoticed: the price of one small read per frame."""
    o = image.offsets
    fields = (o.code_firstlineno, o.code_filename, o.code_qualname, o.code_linetable)
    head = reader.read(addr + OB_TYPE, max(fields) + 8 - OB_TYPE)
    if head is None:
        return None
    return tuple(
        struct.unpack_from("<i" if at == o.code_firstlineno else "<Q", head, at - OB_TYPE)[0]
        for at in (OB_TYPE, OB_SIZE, *fields)
    )


def code_info(
    image: PythonImage,
    pids: list[int],
    addr: int,
    reader: remote_reads.Reader | None = None,
    *,
    check: bool = False,
) -> CodeInfo | None:
    """The code object at `addr` (name, file, line table); CodeInfo.name "" for no code object
    or a C-stack shim (the frame is dropped); None when no process can be read any more.
    Cached in the image by address (None is not cached).  `reader`: one over `pids` kept open
    for a burst of names (else each read opens the processes' memory anew).

    `check` (a stack seen for the first time; pids[0] its writer): the address may hold
    another object than the one cached (the first freed, another allocated there, in this
    process or after the fork in another), so the writer's object is fingerprinted (one small
    read) and read anew if it differs.  Only the writer: a sibling or parent may hold another
    object at the address.  When the writer cannot be read any more, the cache is the best
    knowledge there is and names the frame."""
    cached = image.code_infos.get(addr)
    if cached is not None and not check:
        return cached
    reader = reader or remote_reads.Reader(pids)
    if check:
        writer = reader.first()
        now = fingerprint(writer, image, addr)
        if now is None and cached is not None:
            return cached  # the writer is gone: the best knowledge there is
        if now is not None:
            if cached is not None and cached.fingerprint == now:
                return cached
            image.code_infos.pop(addr, None)  # another object now: never its name
            return _cache(image, addr, _read_code(writer, image, addr, now))
    return _cache(image, addr, _read_code(reader, image, addr))


def _cache(image: PythonImage, addr: int, info: CodeInfo | None) -> CodeInfo | None:
    if info is not None:
        image.code_infos[addr] = info
    return info


def _read_code(
    reader: remote_reads.Reader, image: PythonImage, addr: int, now: tuple[int, ...] | None = None
) -> CodeInfo | None:
    """The code object at `addr` read whole; `now` its fingerprint when already read."""
    now = now or fingerprint(reader, image, addr)
    tp_name = reader.u64(now[0] + TP_NAME) if now is not None and now[0] else None
    if now is None or tp_name is None:
        return None  # unreadable now (every process gone): not cached
    if reader.cstring(tp_name, 16) != "code":
        return CodeInfo("", "", 0, None, now)
    _type, _size, first, filename_at, qualname_at, table = now
    qualname = _unicode(reader, image, qualname_at) if qualname_at else None
    filename = _unicode(reader, image, filename_at) if filename_at else None
    if qualname is None or filename is None or filename in SHIM_FILENAMES:
        return CodeInfo("", "", 0, None, now)
    return CodeInfo(qualname, filename, first, _line_table(reader, image, table, first), now)


def _line_table(
    reader: remote_reads.Reader, image: PythonImage, table: int, first: int
) -> LineTable | None:
    """The code object's co_linetable (the bytes object at `table`), decoded; None when
    unreadable or malformed (its frames then show the first line)."""
    o = image.offsets
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
    *,
    check: bool = False,
) -> str | None:
    """`qualname (file:line)` of a frame running the code object at `addr`, `instr` code units
    from the object's start (the kernel's capture), `line` the line of that instruction; the
    first line when the instruction is unknown or has no line.  "" for a frame to drop, None
    when nothing can be read any more.  Cached per (code object, instruction) in its CodeInfo;
    `reader` and `check` as in code_info."""
    info = code_info(image, pids, addr, reader, check=check)
    if info is None:
        return None
    name = info.names.get(instr)
    if name is None:
        line = line_of(info, image.offsets.code_code_adaptive, instr)
        name = info.names[instr] = info.frame(line)
    return name


def line_of(info: CodeInfo, code_adaptive: int, instr: int | None) -> int:
    """The line being executed: the instruction's byte offset into the bytecode is its
    distance from the code object's start less the bytecode's place in the object (negative
    for a 3.11/3.12 frame whose first instruction has not started: the first line)."""
    if instr is None or info.lines is None:
        return info.firstlineno
    line = info.lines.line_at(instr * CODE_UNIT - code_adaptive)
    return info.firstlineno if line is None else line


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
