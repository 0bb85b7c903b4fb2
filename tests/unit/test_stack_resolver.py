"""cowtrace/kernel/stacks.py: symbol caches follow a program's libraries and never lose names.

A symbol cache (host/symbols.py) reads a process' map once, when it is made.  The fake below
does the same
from a table the test controls, so each case says exactly what a cache made at that moment
knows: the executable right after the exec, the libraries once the loader mapped them, nothing
from a zombie's empty map.
"""

from __future__ import annotations

import pytest

from cowtrace.attribution import maps
from cowtrace.host.symbols import Resolved
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
        self.known = dict(world)  # a snapshot, like the real one
        made.append(self)

    def __bool__(self) -> bool:
        return bool(self.known)

    def resolve(self, addr: int) -> Resolved | None:
        if addr not in self.known:
            return None
        name, module = self.known[addr]
        return Resolved(module, 0, name, None)


@pytest.fixture(autouse=True)
def fake_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    world.clear()
    made.clear()
    monkeypatch.setattr(stacks, "ProcessSymbols", FakeSymbolCache)


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


def test_a_cache_made_from_a_zombie_loses_nothing() -> None:
    resolver = exec_then_loader()
    resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, 3)))
    world.clear()  # it exited; a cache made now would know nothing, and is not kept
    resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, 4)))
    assert len(made) == 3 and len(resolver._caches[PID]) == 2
    assert resolver.symbolize(PID, LIBC_TEXT) == "fork (libc.so.6)"
    assert resolver.symbolize(PID, EXE_TEXT) == "main (server)"


def test_a_process_keeps_its_newest_caches_only() -> None:
    resolver = exec_then_loader()
    for fd in range(CACHES_PER_IMAGE + 2):
        resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, fd)))
    assert len(resolver._caches[PID]) == CACHES_PER_IMAGE
    assert resolver._caches[PID][0] is made[-1]


def test_forgotten_processes_leave_no_cache() -> None:
    """The agent forgets each retired worker: nothing of its symbols may stay behind."""
    resolver = exec_then_loader()
    for fd in range(CACHES_PER_IMAGE + 1):
        resolver.note_code_mapped(mapped((PROT_READ | PROT_EXEC, fd)))
    resolver.note_image(PID)  # an exec: every older cache goes
    assert len(resolver._caches[PID]) == 1
    resolver.note_fork(PID, PID + 1)
    assert resolver.symbolize(PID, EXE_TEXT) == "main (server)"
    resolver.forget(PID)
    resolver.forget(PID + 1)
    assert resolver._caches == {} and resolver._image_of == {} and resolver._names == {}


def test_stacks_no_record_named_are_swept_at_the_second_look() -> None:
    class StackKey:
        def __init__(self, value: int) -> None:
            self.value = value

    class Table(dict):
        Key = StackKey

        def __iter__(self):  # noqa: ANN204 - bcc's tables yield Key objects
            return iter([StackKey(k) for k in list(super().keys())])

        def __delitem__(self, key: StackKey) -> None:
            super().__delitem__(key.value)

    resolver = KernelStackResolver(None, entries=4)
    resolver._table, resolver._fault_table = Table({1: 0, 2: 0}), Table({5: 0, 6: 0})
    assert resolver.sweep_orphans([1, 5]) == 0  # 2 and 6: maybe their records are in flight
    resolver._fault_table[7] = 0  # a new stack since
    assert resolver.sweep_orphans([1, 5, 6]) == 1  # 6 was named meanwhile; 2 never was
    assert sorted(dict.keys(resolver._table)) == [1]
    assert sorted(dict.keys(resolver._fault_table)) == [5, 6, 7]
    assert resolver.sweep_orphans([1, 5, 6]) == 1
    assert sorted(dict.keys(resolver._fault_table)) == [5, 6]
