"""/proc/PID/maps, read and split in one place for every layer that needs a process' mappings
(attribution's address resolution, the Python image finder, allocator probes, symbol caches)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MapLine:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str  # "r-xp": read, write, exec, then s(hared) or p(rivate)
    offset: int  # into the file, in bytes
    path: str  # "" for anonymous memory; "[heap]", "[stack]", ... as the kernel names them

    @property
    def executable(self) -> bool:
        return self.perms[2:3] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"


def parse(text: str) -> list[MapLine]:
    """The lines of a maps file's text (malformed lines are skipped)."""
    found = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        path = parts[5].strip() if len(parts) == 6 else ""
        found.append(MapLine(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), path))
    return found


def read(pid: int) -> list[MapLine]:
    """The process' mappings; [] when it is gone, not ours to read, or a zombie (whose maps
    file is empty: callers must not take that for an empty address space)."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            return parse(handle.read())
    except (OSError, ProcessLookupError):
        return []


def has_memory(pid: int) -> bool:
    """The process exists and still has a memory map (a zombie's maps file is empty)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as handle:
            return bool(handle.read(1))
    except OSError:
        return False
