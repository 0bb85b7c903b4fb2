"""Where a binary's writable sections (.data, .bss) lie, in file-offset terms.

A copied page in a private file mapping is more useful as "python3 .data" than as "python3 at
offset 0x3a1000".  The kernel maps an ELF's writable PT_LOAD segment at
`load_bias + p_vaddr`, file offset `p_offset`; so within that segment a section at `sh_addr`
sits at "virtual file offset" `sh_addr - (p_vaddr - p_offset)`.  For .bss that offset runs past
the end of the file: the loader backs that part with an anonymous mapping placed right after
the file mapping, and maps.py continues the offset arithmetic into it.

pyelftools (Debian python3-pyelftools) reads the headers; a file that is not an ELF, or that
cannot be read, simply has no sections.
"""

from __future__ import annotations

from functools import lru_cache

SECTIONS = (".data", ".bss")
PF_W = 0x2


@lru_cache(maxsize=512)
def section_ranges(path: str) -> tuple[tuple[str, int, int], ...]:
    """(section, lo, hi) in virtual file offsets for .data and .bss of the ELF at `path`."""
    try:
        from elftools.elf.elffile import ELFFile
    except ImportError:  # pragma: no cover - the Makefile installs it
        return ()
    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            loads = [
                (seg["p_vaddr"], seg["p_memsz"], seg["p_vaddr"] - seg["p_offset"])
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & PF_W
            ]
            found = []
            for name in SECTIONS:
                section = elf.get_section_by_name(name)
                if section is None or section["sh_size"] == 0:
                    continue
                addr, size = section["sh_addr"], section["sh_size"]
                for vaddr, memsz, delta in loads:
                    if vaddr <= addr < vaddr + memsz:
                        found.append((name, addr - delta, addr - delta + size))
                        break
            return tuple(found)
    except Exception:  # noqa: BLE001 - any unreadable or odd file just has no sections
        return ()
