"""Read /proc/PID/smaps and smaps_rollup: the kernel's own bookkeeping of private memory.

cowtrace's counts are events; smaps is state. Tests use this module as a second, independent
oracle: after a process has copied pages, those copies (and the originals it leaves behind as
the last mapper) show up as Private_Dirty. Nothing here shares code with the tracer.

All sizes are returned in bytes (the files say kB, meaning KiB). Fields that are not sizes
(``THPeligible``, ``ProtectionKey``, ``VmFlags``) are kept as text in ``Mapping.other``.
Reading another process' smaps needs ptrace-read access (root is fine); a process that has
exited raises :class:`FileNotFoundError` or :class:`ProcessLookupError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$")
_SIZE = re.compile(r"^(\w+):\s+(\d+)\s+kB$")
_OTHER = re.compile(r"^(\w+):\s*(.*)$")

# Pseudo-paths of mappings that are not backed by a file (the rest with inode 0 are anonymous).
_SPECIAL = ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]", "[uprobes]")


@dataclass
class Mapping:
    """One VMA of /proc/PID/smaps: its header and its size fields (bytes)."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    sizes: dict[str, int] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> int:
        """A size field in bytes, 0 when the kernel does not print it."""
        return self.sizes.get(name, 0)

    @property
    def private_dirty(self) -> int:
        return self.get("Private_Dirty")

    @property
    def shared_dirty(self) -> int:
        return self.get("Shared_Dirty")

    @property
    def anon_huge(self) -> int:
        return self.get("AnonHugePages")

    @property
    def is_anonymous(self) -> bool:
        """Not backed by a file: heap, stack, ``[anon:...]`` and nameless private mappings."""
        return self.inode == 0 and self.path not in _SPECIAL

    @property
    def is_private(self) -> bool:
        return len(self.perms) >= 4 and self.perms[3] == "p"

    def overlaps(self, start: int, end: int) -> bool:
        """Whether this mapping shares at least one byte with [start, end)."""
        return self.start < end and start < self.end


def parse_smaps(text: str) -> list[Mapping]:
    """Parse the text of /proc/PID/smaps (or smaps_rollup, which has one pseudo-mapping)."""
    out: list[Mapping] = []
    current: Mapping | None = None
    for line in text.splitlines():
        head = _HEADER.match(line)
        if head:
            start, end, perms, offset, dev, inode, path = head.groups()
            current = Mapping(
                int(start, 16), int(end, 16), perms, int(offset, 16), dev, int(inode), path
            )
            out.append(current)
            continue
        if current is None or not line.strip():
            continue
        size = _SIZE.match(line)
        if size:
            current.sizes[size.group(1)] = int(size.group(2)) * 1024
            continue
        other = _OTHER.match(line)
        if other:
            current.other[other.group(1)] = other.group(2).strip()
    return out


def parse_rollup(text: str) -> dict[str, int]:
    """The size fields of /proc/PID/smaps_rollup, in bytes."""
    maps = parse_smaps(text)
    if maps:
        return dict(maps[0].sizes)
    # Tolerate a rollup without its header line (only field lines).
    tmp = Mapping(0, 0, "", 0, "", 0, "")
    for line in text.splitlines():
        size = _SIZE.match(line.strip())
        if size:
            tmp.sizes[size.group(1)] = int(size.group(2)) * 1024
    return tmp.sizes


def read_smaps(pid: int | str = "self") -> list[Mapping]:
    """Every mapping of a process, from /proc/PID/smaps."""
    return parse_smaps(Path(f"/proc/{pid}/smaps").read_text())


def read_rollup(pid: int | str = "self") -> dict[str, int]:
    """The whole-process totals of /proc/PID/smaps_rollup (bytes), e.g. ``Private_Dirty``."""
    return parse_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text())


def private_dirty_in(
    pid: int | str, start: int, end: int, mappings: list[Mapping] | None = None
) -> int:
    """Bytes of Private_Dirty of the mappings that overlap [start, end).

    smaps has no finer grain than a VMA, so a mapping that only partly overlaps counts whole:
    give each measured buffer its own VMA (the C fixtures do). ``mappings`` lets a caller
    reuse one reading for several ranges.
    """
    maps = read_smaps(pid) if mappings is None else mappings
    return sum(m.private_dirty for m in maps if m.overlaps(start, end))


def anon_private_dirty(pid: int | str, mappings: list[Mapping] | None = None) -> int:
    """Bytes of Private_Dirty in the process' anonymous mappings (heap, stack, nameless).

    Copies of a MAP_PRIVATE file's pages are anonymous pages too, but they live in the file's
    VMA: use ``private_dirty_in`` on that range, or ``read_rollup(pid)["Private_Dirty"]``.
    """
    maps = read_smaps(pid) if mappings is None else mappings
    return sum(m.private_dirty for m in maps if m.is_anonymous)
