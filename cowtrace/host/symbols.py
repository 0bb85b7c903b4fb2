"""A process' native symbols, read by cowtrace itself: what bcc's SymbolCache did for us.

Why not bcc's: bcc 0.26 (Debian 12's) leaves `ModulePath::fd_` uninitialised on one path and
closes it when the object is destroyed (iovisor/bcc#5193, fixed in 0.33), so each symbol cache
made, refreshed or freed could close a random descriptor of cowtrace's: the rare
`OSError: [Errno 9] Bad file descriptor` at attach, and the agent's metrics socket closed under
worker churn.  Our own cache holds no descriptor at all.

A cache is the process' executable file mappings as /proc/PID/maps showed them when it was
made (a forked child shares them until it execs), and resolves through the one ELF reader
(host/elf.py): the address' file offset, the link address it came from, the function there.
A stripped object's static functions come from its detached debug file, found by build-id,
when one is installed.  A process in a container sees its own files: they are opened through
/proc/PID/root (host/rootfs.py); any other process' by their path, which also works once it
is gone.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from cowtrace.host import elf, procmaps, rootfs


@dataclass(frozen=True)
class Resolved:
    """What an address is in a process: its object, its offset in that file, the function."""

    path: str
    file_offset: int
    function: str | None  # None: the object has no symbol there (stripped, static code)
    image: elf.ElfImage | None


class ProcessSymbols:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._root = rootfs.root_prefix(pid)  # before the maps: both of the same process
        self._maps = [m for m in procmaps.read(pid) if m.executable and m.path.startswith("/")]
        self._starts = [m.start for m in self._maps]
        self._images: dict[str, elf.ElfImage | None] = {}

    def __bool__(self) -> bool:
        """Whether it knows any code (a cache made from a zombie's empty maps knows none)."""
        return bool(self._maps)

    def resolve(self, addr: int) -> Resolved | None:
        """None when no executable file mapping of the process holds `addr`."""
        index = bisect.bisect_right(self._starts, addr) - 1
        if index < 0 or addr >= self._maps[index].end:
            return None
        mapping = self._maps[index]
        file_offset = addr - mapping.start + mapping.offset
        image = self._image(mapping.path)
        function = None
        if image is not None:
            vaddr = image.vaddr_at(file_offset)
            if vaddr is not None:
                function = image.function_at(vaddr) or self._debug_function(image, vaddr)
        return Resolved(mapping.path, file_offset, function, image)

    @staticmethod
    def _debug_function(image: elf.ElfImage, vaddr: int) -> str | None:
        """A stripped object's static functions, from its detached debug file when one is
        installed (/usr/lib/debug/.build-id/xx/rest.debug: Debian's -dbg and -dbgsym
        packages), which keeps the same link addresses."""
        if image.build_id is None:
            return None
        path = elf.debug_file(image.build_id)
        debug = elf.load(path) if path is not None else None
        return debug.function_at(vaddr) if debug is not None else None

    def _image(self, path: str) -> elf.ElfImage | None:
        if path not in self._images:
            self._images[path] = elf.load(self._root + path)
        return self._images[path]
