"""ELF files, read once per file with pyelftools (Debian python3-pyelftools), for every layer:

- the loader's view: PT_LOAD segments, position independence, DT_NEEDED and RUNPATH/RPATH
  (which libraries a program asks for: allocator probes, libpython detection);
- where the writable sections (.data, .bss) lie in "virtual file offset" terms, so a copied
  page of a private file mapping reads as "python3 .data" (attribution/maps.py);
- symbols: data objects by name (`_PyRuntime`, `Py_Version`) and the function holding an
  address (the native leaf of a Python writer).  Stripped binaries (Debian's python3.11) keep
  only .dynsym: static functions then have no name, and `function_at` says so rather than
  guessing a neighbour;
- the GNU build-id (the NT_GNU_BUILD_ID note) and file offset <-> link address through the
  PT_LOAD segments: a frame with no symbol is written `module+0xFILEOFFSET` with the module's
  build-id, and `cowtrace report` names it later from `DEBUG_ROOT/.build-id/xx/rest.debug`
  (the layout of Debian's -dbgsym packages; `debug_file`).

Headers are read when a file is first asked for; symbols only when first used (a process maps
a hundred files, of which a handful are ever symbolized).  A file that is not an ELF, or that
cannot be read, is None.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

ET_DYN = "ET_DYN"
PF_W = 0x2
STT_OBJECT, STT_FUNC = 1, 2
WRITABLE_SECTIONS = (".data", ".bss")
DEBUG_ROOT = "/usr/lib/debug"  # where -dbgsym packages put .build-id/xx/rest.debug
# Elf64_Sym, read as one array: pyelftools' per-symbol objects take seconds on libpython.
_SYM = np.dtype(
    [
        ("name", "<u4"),
        ("info", "u1"),
        ("other", "u1"),
        ("shndx", "<u2"),
        ("value", "<u8"),
        ("size", "<u8"),
    ]
)


@dataclass
class _Symbols:
    objects: dict[str, int] = field(default_factory=dict)  # data symbols by name
    starts: list[int] = field(default_factory=list)  # functions, sorted by address
    ends: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@dataclass
class ElfImage:
    path: str
    position_independent: bool  # ET_DYN: loaded at a bias; ET_EXEC: at its link addresses
    min_vaddr: int  # lowest PT_LOAD address (page aligned)
    needed: tuple[str, ...] = ()  # DT_NEEDED libraries
    runpaths: tuple[str, ...] = ()  # DT_RUNPATH and DT_RPATH entries, as written
    writable_sections: tuple[tuple[str, int, int], ...] = ()  # (name, lo, hi), file offsets
    build_id: str | None = None  # NT_GNU_BUILD_ID, lowercase hex
    _loads: list[tuple[int, int, int]] = field(default_factory=list)  # vaddr, filesz, offset
    _symbols: _Symbols | None = None

    @property
    def objects(self) -> dict[str, int]:
        return self._symbol_table().objects

    def function_at(self, vaddr: int) -> str | None:
        """The function whose [start, start + size) holds `vaddr`, or None."""
        table = self._symbol_table()
        index = bisect.bisect_right(table.starts, vaddr) - 1
        if index >= 0 and vaddr < table.ends[index]:
            return table.names[index]
        return None

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset holding the link-time address `vaddr`, None outside the file."""
        for start, filesz, offset in self._loads:
            if start <= vaddr < start + filesz:
                return offset + vaddr - start
        return None

    def vaddr_at(self, offset: int) -> int | None:
        """The link-time address of file offset `offset` (the inverse of `file_offset`), None
        when no PT_LOAD segment maps it."""
        for start, filesz, seg_offset in self._loads:
            if seg_offset <= offset < seg_offset + filesz:
                return start + offset - seg_offset
        return None

    def module_info(self) -> dict[str, Any]:
        """What a summary keeps so `report` can name `module+0xOFFSET` frames without this
        file: its path, build-id and PT_LOAD segments as [file offset, link address, size]
        (a -dbgsym debug file keeps the addresses but not the offsets)."""
        return {
            "path": self.path,
            "build_id": self.build_id,
            "loads": [[offset, vaddr, filesz] for vaddr, filesz, offset in self._loads],
        }

    def read(self, vaddr: int, size: int) -> bytes | None:
        """Initial file contents at a link-time address (a symbol's initializer)."""
        for start, filesz, offset in self._loads:
            if start <= vaddr and vaddr + size <= start + filesz:
                with open(self.path, "rb") as stream:
                    stream.seek(offset + vaddr - start)
                    return stream.read(size)
        return None

    def _symbol_table(self) -> _Symbols:
        if self._symbols is None:
            self._symbols = _read_symbols(self.path)
        return self._symbols


def load(path: str) -> ElfImage | None:
    """The ELF at `path` (cached per file identity), None if it is not a readable ELF file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _load(path, st.st_dev, st.st_ino, st.st_mtime_ns)


@lru_cache(maxsize=512)
def _load(path: str, _dev: int, _ino: int, _mtime: int) -> ElfImage | None:
    try:
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            segments = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
            loads = [(seg["p_vaddr"], seg["p_filesz"], seg["p_offset"]) for seg in segments]
            image = ElfImage(
                path=path,
                position_independent=elf["e_type"] == ET_DYN,
                min_vaddr=min((v for v, _, _ in loads), default=0) & ~0xFFF,
                _loads=loads,
            )
            dynamic = elf.get_section_by_name(".dynamic")
            if dynamic is not None and hasattr(dynamic, "iter_tags"):
                tags = list(dynamic.iter_tags())
                image.needed = tuple(t.needed for t in tags if t.entry.d_tag == "DT_NEEDED")
                image.runpaths = tuple(
                    getattr(t, "runpath", None) or getattr(t, "rpath", "")
                    for t in tags
                    if t.entry.d_tag in ("DT_RUNPATH", "DT_RPATH")
                )
            image.writable_sections = _writable_sections(elf, segments)
            image.build_id = _build_id(elf)
    except (OSError, ELFError, ValueError):
        return None
    return image


def _build_id(elf: ELFFile) -> str | None:
    """The NT_GNU_BUILD_ID note's bytes in hex (what .build-id/ paths and debuginfod use)."""
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOTE" or not hasattr(section, "iter_notes"):
            continue
        for note in section.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and isinstance(note["n_desc"], str):
                return note["n_desc"].lower()
    return None


def debug_file(build_id: str, root: str = DEBUG_ROOT) -> str | None:
    """`root/.build-id/xx/rest.debug` for a build-id, if that file exists."""
    if len(build_id) < 3 or not all(c in "0123456789abcdef" for c in build_id.lower()):
        return None
    path = os.path.join(root, ".build-id", build_id[:2].lower(), build_id[2:].lower() + ".debug")
    return path if os.path.isfile(path) else None


def _writable_sections(elf: ELFFile, segments: list) -> tuple[tuple[str, int, int], ...]:
    """The kernel maps a writable PT_LOAD segment at `load_bias + p_vaddr`, file offset
    `p_offset`; a section at `sh_addr` in it sits at virtual file offset
    `sh_addr - (p_vaddr - p_offset)`.  For .bss that runs past the end of the file: the loader
    backs it with an anonymous mapping right after the file mapping (maps.py follows it)."""
    loads = [
        (seg["p_vaddr"], seg["p_memsz"], seg["p_vaddr"] - seg["p_offset"])
        for seg in segments
        if seg["p_flags"] & PF_W
    ]
    found = []
    for name in WRITABLE_SECTIONS:
        section = elf.get_section_by_name(name)
        if section is None or section["sh_size"] == 0:
            continue
        addr, size = section["sh_addr"], section["sh_size"]
        for vaddr, memsz, delta in loads:
            if vaddr <= addr < vaddr + memsz:
                found.append((name, addr - delta, addr - delta + size))
                break
    return tuple(found)


def _read_symbols(path: str) -> _Symbols:
    table = _Symbols()
    functions: dict[int, tuple[int, str]] = {}
    try:
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            for name in (".dynsym", ".symtab"):
                section = elf.get_section_by_name(name)
                if section is None or section["sh_entsize"] != _SYM.itemsize:
                    continue
                strtab = elf.get_section(section["sh_link"]).data()
                _collect(np.frombuffer(section.data(), dtype=_SYM), strtab, functions, table)
    except (OSError, ELFError, ValueError):
        return table
    for start in sorted(functions):
        size, name = functions[start]
        table.starts.append(start)
        table.ends.append(start + size)
        table.names.append(name)
    return table


def _name(strtab: bytes, offset: int) -> str:
    return strtab[offset : strtab.index(b"\0", offset)].decode(errors="replace")


def _collect(
    rows: np.ndarray,
    strtab: bytes,
    functions: dict[int, tuple[int, str]],
    table: _Symbols,
) -> None:
    kinds = rows["info"] & 0xF
    keep = (rows["value"] != 0) & (rows["name"] != 0)
    for row in rows[keep & (kinds == STT_FUNC)].tolist():
        value, size = row[4], max(1, row[5])
        if value not in functions or functions[value][0] < size:
            functions[value] = (size, _name(strtab, row[0]))
    for row in rows[keep & (kinds == STT_OBJECT)].tolist():
        table.objects.setdefault(_name(strtab, row[0]), row[4])


LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)


def needed_libraries(path: str, root: str = "") -> list[str]:
    """Paths of the libraries `path` names in DT_NEEDED that can be found on this system, the
    way the loader looks (RUNPATH/RPATH with $ORIGIN, LD_LIBRARY_PATH, the system dirs).
    `root`: a container's /proc/PID/root (host/rootfs.py): `path` and the paths returned are
    the container's, looked up under `root`.

    Why not `ldd`: it runs the program's loader, and binutils may not be installed where
    cowtrace runs.  Only the program's own DT_NEEDED: an allocator that replaces malloc is
    linked by the program or preloaded; one pulled in by a library is caught by the exec-time
    scan of the process' mappings (kernel/uprobes.py)."""
    image = load(root + path)
    if image is None:
        return []
    try:
        origin = os.path.dirname(path if root else os.path.realpath(path))
    except OSError:  # /proc/PID/exe of a process exiting meanwhile: its link reads ENOENT
        origin = os.path.dirname(path)
    dirs = [
        d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
        for entry in image.runpaths
        for d in entry.split(":")
        if d
    ]
    env_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found = []
    for name in image.needed:
        if os.sep in name:
            if os.path.exists(root + name):
                found.append(name)
            continue
        for directory in (*dirs, *env_dirs, *LIBRARY_DIRS):
            candidate = os.path.join(directory, name)
            if os.path.exists(root + candidate):
                found.append(candidate)
                break
    return found


def section_ranges(path: str) -> tuple[tuple[str, int, int], ...]:
    """(section, lo, hi) in virtual file offsets for .data and .bss of the ELF at `path`."""
    image = load(path)
    return image.writable_sections if image is not None else ()
