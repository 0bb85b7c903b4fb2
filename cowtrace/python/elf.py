"""Symbols of an ELF file (the interpreter binary, libpython, libc), read once per file.

Used to find `_PyRuntime` and `Py_Version` in an interpreter and to name the native leaf of a
write.  Stripped binaries (Debian's python3.11) keep only .dynsym: static functions such as the
collector's then have no name, and `function_at` says so rather than guessing a neighbour.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

ET_DYN = "ET_DYN"
STT_OBJECT, STT_FUNC = 1, 2
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
class ElfSymbols:
    path: str
    position_independent: bool  # ET_DYN: loaded at a bias; ET_EXEC: at its link addresses
    min_vaddr: int  # lowest PT_LOAD address (page aligned)
    objects: dict[str, int] = field(default_factory=dict)  # data symbols by name
    needed: tuple[str, ...] = ()  # DT_NEEDED libraries
    _starts: list[int] = field(default_factory=list)  # functions, sorted by address
    _ends: list[int] = field(default_factory=list)
    _names: list[str] = field(default_factory=list)
    _loads: list[tuple[int, int, int]] = field(default_factory=list)  # vaddr, filesz, offset

    def function_at(self, vaddr: int) -> str | None:
        """The function whose [start, start + size) holds `vaddr`, or None."""
        index = bisect.bisect_right(self._starts, vaddr) - 1
        if index >= 0 and vaddr < self._ends[index]:
            return self._names[index]
        return None

    def read(self, vaddr: int, size: int) -> bytes | None:
        """Initial file contents at a link-time address (a symbol's initializer)."""
        for start, filesz, offset in self._loads:
            if start <= vaddr and vaddr + size <= start + filesz:
                with open(self.path, "rb") as stream:
                    stream.seek(offset + vaddr - start)
                    return stream.read(size)
        return None


def load_symbols(path: str) -> ElfSymbols | None:
    """Symbols of `path` (cached per file identity), None if it is not a readable ELF file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _load(path, st.st_dev, st.st_ino, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _load(path: str, _dev: int, _ino: int, _mtime: int) -> ElfSymbols | None:
    try:
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            loads = [
                (seg["p_vaddr"], seg["p_filesz"], seg["p_offset"])
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD"
            ]
            symbols = ElfSymbols(
                path=path,
                position_independent=elf["e_type"] == ET_DYN,
                min_vaddr=min((v for v, _, _ in loads), default=0) & ~0xFFF,
                _loads=loads,
            )
            dynamic = elf.get_section_by_name(".dynamic")
            if dynamic is not None and hasattr(dynamic, "iter_tags"):
                symbols.needed = tuple(
                    tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"
                )
            functions: dict[int, tuple[int, str]] = {}
            for name in (".dynsym", ".symtab"):
                section = elf.get_section_by_name(name)
                if section is None or section["sh_entsize"] != _SYM.itemsize:
                    continue
                strtab = elf.get_section(section["sh_link"]).data()
                _collect(np.frombuffer(section.data(), dtype=_SYM), strtab, functions, symbols)
    except (OSError, ELFError):
        return None
    for start in sorted(functions):
        size, name = functions[start]
        symbols._starts.append(start)
        symbols._ends.append(start + size)
        symbols._names.append(name)
    return symbols


def _name(strtab: bytes, offset: int) -> str:
    return strtab[offset : strtab.index(b"\0", offset)].decode(errors="replace")


def _collect(
    table: np.ndarray,
    strtab: bytes,
    functions: dict[int, tuple[int, str]],
    symbols: ElfSymbols,
) -> None:
    kinds = table["info"] & 0xF
    keep = (table["value"] != 0) & (table["name"] != 0)
    for row in table[keep & (kinds == STT_FUNC)].tolist():
        value, size = row[4], max(1, row[5])
        if value not in functions or functions[value][0] < size:
            functions[value] = (size, _name(strtab, row[0]))
    for row in table[keep & (kinds == STT_OBJECT)].tolist():
        symbols.objects.setdefault(_name(strtab, row[0]), row[4])
