"""cowtrace/kernel/stacks.py: symbol caches follow a program's libraries and never lose names.

bcc's SymbolCache reads a process' map once, when it is made.  The fake below does the same
from a table the test controls, so each case says exactly what a cache made at that moment
knows: the executable right after the exec, the libraries once the loader mapped them, nothing
from a zombie's empty map.
"""

from __future__ import annotations

import sys
import types

import pytest

from cowtrace.attribution import maps
from cowtrace.kernel import stacks
from cowtrace.kernel.abi import PE_EXEC, PE_MAPS
from cowtrace.kernel.stacks import CACHES_PER_IMAGE, KernelStackResolver
from cowtrace.kernel.tracer import ProcRecord

PID = 4242
EXE_TEXT, LIBC_TEXT = 0x5555_0000_1000, 0x7F00_0000_1000
PROT_READ, PROT_EXEC = 0x1, 0x4

# What /proc/PID/maps shows now: address -> (function, object); an empty dict is a zombie.
world: dict[int, tuple[str, str]] = {}
made: list[FakeSymbolCache] = []


class FakeSymbolCache:
    def __init__(self, pid: int) -> None:
        assert pid == PID
        self.known = dict(world)  # a snapshot, like bcc's
        made.append(self)

    def resolve(self, addr: int, demangle: bool) -> tuple[bytes | None, int, bytes | None]:
        if addr not in self.known:
            return None, addr, None
        name, module = self.known[addr]
        return name.encode(), 0, module.encode()


@pytest.fixture(autouse=True)
def fake_bcc(monkeypatch: pytest.MonkeyPatch) -> None:
    world.clear()
    made.clear()
    monkeypatch.setitem(sys.modules, "bcc", types.SimpleNamespace(SymbolCache=FakeSymbolCache))
    monkeypatch.setattr(stacks.procmaps, "has_memory", lambda pid: pid == PID and bool(world))


def mapped(*prots_and_fds: tuple[int, int]) -> list[int]:
    """The processes the map watcher says mapped code (what the session hands over), when PID
    re-read after its exec shows one mapping per (prot, fd): a file (/lib/libFD.so) for fd >= 0,
    anonymous memory for -1."""
    lines = []
    for index, (prot, fd) in enumerate(prots_and_fds):
        start = 0x7F10_0000_0000 + index * 0x10000
        perms = ("r" if prot & PROT_READ else "-") + "-" + ("x" if prot & PROT_EXEC else "-")
        path = f"/lib/lib{fd}.so" if fd >= 0 else ""
        lines.append(f"{start:x}-{start + 0x1000:x} {perms}p 00000000 00:00 0 {path}\n")
    intervals = maps.parse_maps("".join(lines))
    original = maps.read_proc_maps
    maps.read_proc_maps = lambda pid: intervals
    try:
        watcher = maps.MapWatcher(lambda pid: None)
        watcher.on_records(
            [
                ProcRecord(kind, ts, PID, 0, PID, -1, 0, "")
                for ts, kind in ((1, PE_EXEC), (2, PE_MAPS))
            ]
        )
        return watcher.read()[1]
    finally:
        maps.read_proc_maps = original


def exec_then_loader() -> KernelStackResolver:
    """A cache made at the exec (executable only); then the loader maps libc's text."""
    resolver = KernelStackResolver(None)
    world[EXE_TEXT] = ("main", "/usr/bin/server")
    resolver.note_image(PID)
    world[LIBC_TEXT] = ("fork", "/usr/lib/x86_64-linux-gnu/libc.so.6")
    return resolver


def test_a_cache_made_at_exec_does_not_know_the_libraries_mapped_after_it() -> None:
    resolver = exec_then_loader()
    assert resolver.symbolize(PID, EXE_TEXT) == "main (server)"
    assert resolver.symbolize(PID, LIBC_TEXT) == "[unknown]"


def test_an_executable_file_mapping_brings_a_newer_cache() -> None:
    resolver = exec_then_loader()
    resolver.symbolize(PID, LIBC_TEXT)  # an earlier answer is not kept past the new mapping
    resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, 3)))
    assert resolver.symbolize(PID, LIBC_TEXT) == "fork (libc.so.6)"
    assert resolver.symbolize(PID, EXE_TEXT) == "main (server)"


def test_mappings_that_hold_no_code_make_no_cache() -> None:
    resolver = exec_then_loader()
    assert mapped((PROT_READ, 3), (PROT_READ | PROT_EXEC, -1)) == []
    resolver.note_code_mapped(mapped((PROT_READ, 3), (PROT_READ | PROT_EXEC, -1)))
    assert len(made) == 1


def test_a_cache_made_from_a_zombie_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = exec_then_loader()
    resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, 3)))
    world.clear()  # it exited; a cache made now would know nothing
    monkeypatch.setattr(stacks.procmaps, "has_memory", lambda pid: True)  # it died after the check
    resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, 4)))
    assert len(made) == 3
    assert resolver.symbolize(PID, LIBC_TEXT) == "fork (libc.so.6)"
    assert resolver.symbolize(PID, EXE_TEXT) == "main (server)"


def test_a_process_keeps_its_newest_caches_only() -> None:
    resolver = exec_then_loader()
    for fd in range(CACHES_PER_IMAGE + 2):
        resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, fd)))
    assert len(resolver._caches[PID]) == CACHES_PER_IMAGE
    assert resolver._caches[PID][0] is made[-1]
