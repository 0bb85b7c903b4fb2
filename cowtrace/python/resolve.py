"""Names for what the kernel captured: (code object, instruction) -> `function (file:line)`,
the line being executed; leaf ip -> native function.  Each code object is read once per
interpreter image (PythonImage caches its name and line table), each line computed once per
(code object, instruction).

A code object is read from the writer if it is still alive, else from any other process of the
same image (pre-fork code objects sit at the same address in the whole family).  What is read is
checked (the object's type must be named "code"), so a stale address yields no frame rather
than a wrong one.

An address does not name a code object for good: a long-running process frees code objects
(lambdas, exec'd or compiled code, reloaded modules, a module's body once imported) and
allocates others in their place, and a forked child may hold other code than its parent at an
address.  So code objects are cached by address and *fingerprint* (the first bytes that tell
them apart: type, co_qualname, co_filename and co_linetable pointers, co_firstlineno), and the
tracker reads the fingerprints of a drain's frames from their own processes, once per drain
and process (read_fingerprints), before naming them (tracker.py).
"""

from __future__ import annotations

import functools
import os
import struct

import numpy as np

from cowtrace.host import procmaps, remote_reads
from cowtrace.host.elf import load as load_symbols
from cowtrace.host.rootfs import host_path
from cowtrace.python.detect import CodeInfo, Fingerprint, PythonImage
from cowtrace.python.linetable import CODE_UNIT, LineTable
from cowtrace.python.offsets import PyOffsets

OB_TYPE, TP_NAME = 8, 24  # PyObject.ob_type, PyTypeObject.tp_name: fixed on x86-64 3.11-3.13
MAX_STRING = 1024
MAX_LINETABLE = 4 << 20  # a location table larger than this is taken for garbage
_TYPE_AND_FIRST = struct.Struct("<Q24xi")  # of a Fingerprint
MAX_VARIANTS = 4  # code objects kept per address (freed and reallocated, a child's own)
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
    image: PythonImage,
    pids: list[int],
    addr: int,
    reader: remote_reads.Reader | None = None,
    fingerprint: Fingerprint | None = None,
) -> CodeInfo | None:
    """The code object at `addr` (name, file, line table); CodeInfo.name "" for no code object
    or a C-stack shim (the frame is dropped); None when no process can be read any more.
    Cached in the image by address and fingerprint (None is not cached).  `fingerprint`: the
    one the frame's own process holds at `addr` (read_fingerprints), when known: a cached
    object with it answers without reading, and an object read must have it (another process
    of the family may hold other code there).  Without it the object is read as it is now.
    `reader`: one over `pids` kept open for a burst of names (else each read opens the
    processes' memory anew)."""
    variants = image.code_infos.get(addr)
    if fingerprint is not None and variants is not None:
        known = variants.get(fingerprint)
        if known is not None:
            return known
    reader = reader or remote_reads.Reader(pids)
    found = parse_fingerprint(image, reader.read(addr, fingerprint_size(image)))
    if found is None or (fingerprint is not None and found != fingerprint):
        return None  # unreadable now, or not the code object the frame ran: not cached
    known = variants.get(found) if variants is not None else None
    if known is not None:
        return known
    info = _read_code(reader, image, addr, found)
    if info is None:
        return None
    variants = image.code_infos.setdefault(addr, {})
    if len(variants) >= MAX_VARIANTS:
        del variants[next(iter(variants))]  # the oldest
    variants[found] = info
    if info.name:
        image.latest_infos[addr] = info
    return info


def _read_code(
    reader: remote_reads.Reader, image: PythonImage, addr: int, found: Fingerprint
) -> CodeInfo | None:
    """The code object at `addr` whose fingerprint was just read; None when unreadable."""
    o = image.offsets
    type_addr, first = _TYPE_AND_FIRST.unpack_from(found)
    if not image.code_type or type_addr != image.code_type:
        tp_name = reader.u64(type_addr + TP_NAME) if type_addr else None
        if tp_name is None:
            return None
        if reader.cstring(tp_name, 16) != "code":
            return CodeInfo("", "", 0, None)
        image.code_type = type_addr
    qualname = _pointer_string(reader, image, addr + o.code_qualname)
    filename = _pointer_string(reader, image, addr + o.code_filename)
    if qualname is None or filename is None or filename in SHIM_FILENAMES:
        return CodeInfo("", "", 0, None)
    return CodeInfo(qualname, filename, first, _line_table(reader, image, addr, first))


FINGERPRINT = np.dtype(  # the fields of a Fingerprint, packed in its order
    [("type", "<u8"), ("qualname", "<u8"), ("filename", "<u8"), ("linetable", "<u8"),
     ("firstlineno", "<i4")]
)  # fmt: skip


@functools.cache
def _fingerprint_layout(offsets: PyOffsets) -> tuple[int, np.dtype]:
    """(bytes read from a code object's start, the dtype of the fingerprint's fields in
    them)."""
    at = [OB_TYPE, offsets.code_qualname, offsets.code_filename, offsets.code_linetable]
    at.append(offsets.code_firstlineno)
    size = max(at) + 8
    fields = FINGERPRINT.fields
    return size, np.dtype(
        {
            "names": list(FINGERPRINT.names),
            "formats": [fields[name][0] for name in FINGERPRINT.names],
            "offsets": at,
            "itemsize": size,
        }
    )


def fingerprint_size(image: PythonImage) -> int:
    """Bytes to read from a code object's start for its fingerprint."""
    return _fingerprint_layout(image.offsets)[0]


def _fingerprints_of(image: PythonImage, rows: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """The fingerprints in rows of bytes read from code objects' starts, and whether each is
    a code object's (as far as known: any, until the first code object was read)."""
    size, dtype = _fingerprint_layout(image.offsets)
    fields = rows.reshape(-1).view(dtype)
    packed = np.empty(len(fields), FINGERPRINT)
    for name in FINGERPRINT.names:
        packed[name] = fields[name]
    blob, step = packed.tobytes(), FINGERPRINT.itemsize
    code = fields["type"] == image.code_type if image.code_type else np.ones(len(fields), bool)
    return [blob[at : at + step] for at in range(0, len(blob), step)], code


def parse_fingerprint(image: PythonImage, data: bytes | None) -> Fingerprint | None:
    """The fingerprint in the first bytes of a code object (or what now sits there); None when
    they were not read."""
    size = fingerprint_size(image)
    if data is None or len(data) < size:
        return None
    return _fingerprints_of(image, np.frombuffer(data[:size], np.uint8))[0][0]


def is_code(image: PythonImage, fingerprint: Fingerprint | None) -> bool:
    """Whether a fingerprint is a code object's, as far as known (any, until the first code
    object was read and its type known)."""
    return fingerprint is not None and (
        not image.code_type or int.from_bytes(fingerprint[:8], "little") == image.code_type
    )


def read_fingerprints(image: PythonImage, pid: int, addrs: list[int]) -> list[Fingerprint | None]:
    """The fingerprints of the code objects `pid` holds now at each address, read in one go
    (remote_reads.read_scattered); None where it holds none (freed), or cannot be read (the
    process gone)."""
    rows, ok = remote_reads.read_scattered(pid, addrs, fingerprint_size(image))
    found, code = _fingerprints_of(image, rows)
    return [fp if good else None for fp, good in zip(found, (ok & code).tolist(), strict=True)]


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
    fingerprint: Fingerprint | None = None,
) -> str | None:
    """`qualname (file:line)` of a frame running the code object at `addr`, `instr` code units
    from the object's start (the kernel's capture), `line` the line of that instruction; the
    first line when the instruction is unknown or has no line.  "" for a frame to drop, None
    when nothing can be read any more.  Cached per (code object, instruction); `reader` and
    `fingerprint` as in code_info."""
    info = code_info(image, pids, addr, reader, fingerprint)
    if info is None:
        # Nothing of it can be read now (freed and unmapped, every process gone): the code
        # object last named at the address, as the address alone named frames before.
        info = image.latest_infos.get(addr)
        if info is None:
            return None
    name = info.frames.get(instr)
    if name is None:
        name = info.frame(line_of(info, image.offsets.code_code_adaptive, instr))
        info.frames[instr] = name
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
