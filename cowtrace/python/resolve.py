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
by a fingerprint (new_stack_names): a small read per frame through the open memory file, once per
new stack; a known stack keeps the names it was given then (python/tracker.py).
"""

from __future__ import annotations

import functools
import os
import struct

from cowtrace.host import procmaps, remote_reads
from cowtrace.host.elf import load as load_symbols
from cowtrace.host.rootfs import host_path
from cowtrace.python.detect import CodeInfo, PythonImage
from cowtrace.python.linetable import CODE_UNIT, LineTable
from cowtrace.python.offsets import PyOffsets

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


Fingerprint = tuple[int, ...]


@functools.cache
def _head_layout(offsets: PyOffsets) -> struct.Struct:
    """The fields of a code object's head a fingerprint is made of, from ob_type on, as one
    struct (one unpack per frame: the thread naming new stacks does it for every frame)."""
    fields = (
        (OB_TYPE, "Q"),
        (OB_SIZE, "q"),
        (offsets.code_firstlineno, "i"),
        (offsets.code_filename, "Q"),
        (offsets.code_qualname, "Q"),
        (offsets.code_linetable, "Q"),
    )
    at, layout = OB_TYPE, "<"
    for offset, code in fields:
        if offset < at:
            raise ValueError(f"CPython {offsets.version}: code object fields out of order")
        layout += f"{offset - at}x{code}"
        at = offset + struct.calcsize(code)
    return struct.Struct(layout)


def fingerprint(reader: remote_reads.Reader, image: PythonImage, addr: int) -> Fingerprint | None:
    """What tells the code object at `addr` from another one later allocated there: its type,
    size (code units), first line and the addresses of its file name, qualified name and line
    table (in that order), all from one read of its head (ob_type to co_linetable: 136 bytes
    on 3.11-3.13); None when `reader` cannot read it.  Another object with every one of these
    equal (same size and first line, its three strings recycled at the same addresses) goes
    unnoticed: the price of one small read per frame."""
    layout = _head_layout(image.offsets)
    head = reader.read(addr + OB_TYPE, layout.size)
    return None if head is None else layout.unpack(head)


def code_info(
    image: PythonImage,
    pids: list[int],
    addr: int,
    reader: remote_reads.Reader | None = None,
    *,
    checked: bool = False,
    now: Fingerprint | None = None,
) -> CodeInfo | None:
    """The code object at `addr` (name, file, line table); CodeInfo.name "" for no code object
    or a C-stack shim (the frame is dropped); None when no process can be read any more.
    Cached in the image by address (None is not cached).  `reader`: one over `pids` kept open
    for a burst of names (else each read opens the processes' memory anew).

    `checked` (a stack seen for the first time, pids[0] its writer; new_stack_names): the
    address may hold another object than the one cached (the first freed, another allocated
    there, in this process or after the fork in another), so the cached one is taken only if
    `now`, the writer's object's fingerprint, is its own; else the writer's object is read.
    Only the writer: a sibling or parent may hold another object at the address.  `now` None
    (the writer cannot be read any more): the cache is the best knowledge there is and names
    the frame."""
    cached = image.code_infos.get(addr)
    if cached is not None and (not checked or now is None or cached.fingerprint == now):
        return cached
    reader = reader or remote_reads.Reader(pids)
    if checked and now is not None:
        image.code_infos.pop(addr, None)  # another object now: never the cached one's name
        return _cache(image, addr, _read_writers(reader, image, addr, now))
    return _cache(image, addr, _read_code(reader, image, addr))


def _read_writers(
    reader: remote_reads.Reader, image: PythonImage, addr: int, now: Fingerprint
) -> CodeInfo | None:
    """The writer's object at `addr` (fingerprint `now`), read from the writer (reader.pids[0]).
    A writer that exits while it is read (its fingerprint unreadable after) leaves a partial
    read: no name, or no line table, which the cache would keep for every later stack.  Then
    the object is read from the first other process holding one with the same fingerprint (a
    pre-fork object: the parent's or a sibling's copy of it)."""
    writer = reader.first()
    info = _read_code(writer, image, addr, now)
    if fingerprint(writer, image, addr) is not None:
        return info  # read whole from a live writer: what it says stands
    for pid in reader.pids[1:]:
        other = reader.only(pid)
        if fingerprint(other, image, addr) == now:
            found = _read_code(other, image, addr, now)
            if found is not None:
                return found
    return info


def _cache(image: PythonImage, addr: int, info: CodeInfo | None) -> CodeInfo | None:
    if info is not None:
        image.code_infos[addr] = info
    return info


def _read_code(
    reader: remote_reads.Reader, image: PythonImage, addr: int, now: Fingerprint | None = None
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
    checked: bool = False,
    now: Fingerprint | None = None,
) -> str | None:
    """`qualname (file:line)` of a frame running the code object at `addr`, `instr` code units
    from the object's start (the kernel's capture), `line` the line of that instruction; the
    first line when the instruction is unknown or has no line.  "" for a frame to drop, None
    when nothing can be read any more.  Cached per (code object, instruction) in its CodeInfo;
    `reader`, `checked` and `now` as in code_info."""
    info = code_info(image, pids, addr, reader, checked=checked, now=now)
    if info is None:
        return None
    name = info.names.get(instr)
    if name is None:
        line = line_of(info, image.offsets.code_code_adaptive, instr)
        name = info.names[instr] = info.frame(line)
    return name


def new_stack_names(
    image: PythonImage,
    pids: list[int],
    codes: tuple[int, ...],
    instrs: tuple[int | None, ...],
    reader: remote_reads.Reader | None = None,
    prints: dict[int, Fingerprint | None] | None = None,
) -> tuple[str | None, ...]:
    """The frame names of a stack seen for the first time, pids[0] its writer: every code
    object's fingerprint read from the writer in one burst (Reader.read_many: its memory file
    opened once, a pread per code object), then each frame named as frame_name with
    `checked`.  `prints`: the writer's fingerprints read
    for the stacks before it in the same bunch, by address (all of the bunch's stacks were
    captured before any was read: a second read would tell nothing the first did not), and
    kept there.  A read per frame of each new stack made the thread naming them fall behind a
    pool's workers, gone before it named their stacks."""
    reader = reader or remote_reads.Reader(pids)
    prints = {} if prints is None else prints
    layout = _head_layout(image.offsets)  # once: hashing the offsets is not free
    unread = [addr for addr in dict.fromkeys(codes) if addr not in prints]
    if unread:
        heads = reader.first().read_many([(addr + OB_TYPE, layout.size) for addr in unread])
        for addr, head in zip(unread, heads, strict=True):
            prints[addr] = None if head is None else layout.unpack(head)
    return tuple(
        frame_name(image, pids, addr, instr, reader, checked=True, now=prints[addr])
        for addr, instr in zip(codes, instrs, strict=True)
    )


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
