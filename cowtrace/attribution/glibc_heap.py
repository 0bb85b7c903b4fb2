"""Recover the blocks glibc malloc handed out before cowtrace attached, from /proc/PID/mem.

Attach mode runs without malloc uprobes (they cost microseconds per call), so the blocks that
already exist are found by walking glibc's own structures (x86-64, glibc 2.26+ layouts, checked
against Debian 12's 2.36):

- the main arena's chunks, from the start of [heap] to its top chunk;
- other arenas' heaps: 64 MiB-aligned mappings starting with a heap_info whose arena is on the
  arena list (heap_info, then for the arena's first heap the malloc_state, then chunks);
- mmapped chunks (IS_MMAPPED): anonymous mappings starting with a chunk header of their size.

A chunk is in use when the next chunk's PREV_INUSE bit is set, except for chunks parked in a
tcache or fastbin (they keep that bit set); those lists are walked (pointers are mangled by
safe-linking, `next = (&next >> 12) ^ stored`) and their chunks dropped.  The arena itself lives
in libc's data and is found by the one field we know the value of: its `top` pointer.

Sizes are usable sizes (malloc_usable_size): chunk size - 8, or - 16 for mmapped chunks.
Nothing here stops the process: a heap changing under the walk ends the walk early.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from cowtrace.attribution.maps import Interval
from cowtrace.host.memory import PAGE_SIZE
from cowtrace.host.remote_reads import MemoryFile, drained_reads

PREV_INUSE, IS_MMAPPED, NON_MAIN_ARENA = 0x1, 0x2, 0x4
SIZE_BITS = 0x7
MIN_CHUNK = 32
HEAP_MAX = 64 << 20
ARENA_TOP = 0x60  # offsetof(struct malloc_state, top)
ARENA_FASTBINS = 0x10
NFASTBINS = 10
ARENA_BINS = 0x70
ARENA_NEXT = 0x870
ARENA_SIZE = 0x898  # sizeof(struct malloc_state)
TCACHE_BINS = 64
TCACHE_CHUNK = 0x290  # chunk of a tcache_perthread_struct (uint16 counts[64], entries[64])
HEAP_INFO_SIZES = (48, 32, 40)  # sizeof(heap_info): 2.35+ first, older after
WINDOW = 64 << 10  # for scattered pointer reads (free lists, arenas)
WHOLE_READ = 64 << 20  # a heap is read this much at a time
MAX_LIST = 1 << 20  # a free list longer than this is corrupt (or changing): stop


@dataclass
class Recovered:
    """In-use blocks found: user addresses and usable sizes, sorted by address."""

    addrs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    arenas: int = 0  # arenas found (0 when the main arena was not located)
    parked: int = 0  # chunks left out because a tcache or fastbin holds them


class Memory(MemoryFile):
    """Another process' memory (host/remote_reads.py), scattered u64 reads served from one
    window at a time."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self._base = 0
        self._data = b""

    def u64(self, addr: int) -> int | None:
        offset = addr - self._base
        if offset < 0 or offset + 8 > len(self._data):
            self._base = addr
            self._data = self.read(addr, WINDOW)
            offset = 0
            if len(self._data) < 8:
                return None
        return struct.unpack_from("<Q", self._data, offset)[0]


@dataclass
class _Chunks:
    """Chunks that look in use (start addresses and chunk sizes) of one heap."""

    starts: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    top: int = 0  # the top chunk (the heap's unused end), 0 if the walk did not reach it


def _walk_chunks(mem: Memory, start: int, end: int) -> _Chunks:
    """Follow chunk sizes from `start`; stop at the top chunk, a fencepost or nonsense.

    The heap is read WHOLE_READ bytes at a time and walked as 8-byte words: the walk is
    sequential by nature, so the loop body is kept to a few index operations."""
    found = _Chunks()
    starts, sizes = found.starts, found.sizes
    base, words, have = start, memoryview(b"").cast("Q"), 0  # window: [base, base + have)
    chunk = start
    while chunk + 16 <= end:
        if chunk + 16 > base + have:  # the header is past the window: move it here
            base, words, have = _window(mem, chunk, end)
            if have < 16:
                break
        length = words[((chunk - base) >> 3) + 1] & ~SIZE_BITS
        if length < MIN_CHUNK or length & 15 or chunk + length > end:
            if length < MIN_CHUNK:
                found.top = chunk  # a fencepost: the heap's end
            break
        following = chunk + length
        if following + 16 > end:  # the last chunk of the heap is the top chunk
            found.top = chunk
            break
        if following + 16 > base + have:
            base, words, have = _window(mem, following, end)
            if have < 16:
                break
        if words[((following - base) >> 3) + 1] & PREV_INUSE:
            starts.append(chunk)
            sizes.append(length)
        chunk = following
    return found


def _window(mem: Memory, addr: int, end: int) -> tuple[int, memoryview, int]:
    """Up to WHOLE_READ bytes of [addr, end) as 8-byte words, and how many bytes were read."""
    data = mem.read(addr, min(WHOLE_READ, end - addr))
    usable = len(data) - len(data) % 8
    return addr, memoryview(data)[:usable].cast("Q"), usable


def _demangle(pos: int, stored: int) -> int:
    return (pos >> 12) ^ stored


def _tcache_parked(mem: Memory, chunk: int) -> set[int] | None:
    """If the chunk at `chunk` is a tcache_perthread_struct, the chunks its bins hold."""
    raw = mem.read(chunk + 16, TCACHE_BINS * 2 + TCACHE_BINS * 8)
    if len(raw) < TCACHE_BINS * 10:
        return None
    counts = struct.unpack_from(f"<{TCACHE_BINS}H", raw, 0)
    entries = struct.unpack_from(f"<{TCACHE_BINS}Q", raw, TCACHE_BINS * 2)
    parked: set[int] = set()
    for index, (count, entry) in enumerate(zip(counts, entries, strict=True)):
        if (count == 0) != (entry == 0) or entry % 16:
            return None
        want = index * 16 + MIN_CHUNK
        for _ in range(min(count, MAX_LIST)):
            if entry == 0 or entry % 16:
                break
            size = mem.u64(entry - 8)
            if size is None or size & ~SIZE_BITS != want:
                return None  # not a tcache after all (or one changing under the walk)
            parked.add(entry - 16)
            stored = mem.u64(entry)
            if stored is None:
                break
            entry = _demangle(entry, stored)
    return parked


def _fastbin_parked(mem: Memory, arena: int) -> set[int]:
    parked: set[int] = set()
    raw = mem.read(arena + ARENA_FASTBINS, NFASTBINS * 8)
    if len(raw) < NFASTBINS * 8:
        return parked
    for chunk in struct.unpack(f"<{NFASTBINS}Q", raw):
        steps = 0
        while chunk and chunk % 16 == 0 and steps < MAX_LIST:
            parked.add(chunk)
            stored = mem.u64(chunk + 16)
            if stored is None:
                break
            chunk = _demangle(chunk + 16, stored)
            steps += 1
    return parked


def _is_arena(mem: Memory, base: int, top: int) -> bool:
    """Whether a malloc_state at `base` has `top`, empty bins pointing at themselves or
    chunk pointers, and a non-null next."""
    raw = mem.read(base, ARENA_SIZE)
    if len(raw) < ARENA_SIZE:
        return False
    if struct.unpack_from("<Q", raw, ARENA_TOP)[0] != top:
        return False
    unsorted_fd, unsorted_bk = struct.unpack_from("<QQ", raw, ARENA_BINS)
    bin_head = base + ARENA_BINS - 16  # bin_at(m, 1)
    if (unsorted_fd == bin_head) != (unsorted_bk == bin_head):
        return False
    if unsorted_fd % 16 or unsorted_bk % 16:
        return False
    return struct.unpack_from("<Q", raw, ARENA_NEXT)[0] != 0


def _find_main_arena(mem: Memory, intervals: list[Interval], top: int) -> int | None:
    """main_arena lies in libc's writable data; find the qword equal to the top chunk."""
    needle = struct.pack("<Q", top)
    for interval in intervals:
        if "libc" not in interval.name or interval.kind != "file" or interval.executable:
            continue
        data = mem.read(interval.start, interval.end - interval.start)
        at = data.find(needle)
        while at >= 0:
            if at % 8 == 0:
                base = interval.start + at - ARENA_TOP
                if _is_arena(mem, base, top):
                    return base
            at = data.find(needle, at + 1)
    return None


def _arena_heaps(mem: Memory, arena: int, spans: dict[int, int]) -> list[tuple[int, int]]:
    """(chunk start, end) of every heap of a non-main arena, newest first."""
    top = mem.u64(arena + ARENA_TOP)
    if top is None:
        return []
    heap = top & ~(HEAP_MAX - 1)
    out = []
    for _ in range(1024):
        if heap not in spans or mem.u64(heap) != arena:
            break
        size = mem.u64(heap + 16) or 0
        end = heap + min(size, spans[heap])
        if heap <= arena < end:
            first = (arena + ARENA_SIZE + 15) & ~15
            out.append((first, end))
        else:
            candidates = [heap + s for s in HEAP_INFO_SIZES]
            best = max(candidates, key=lambda c: len(_walk_chunks(mem, c, end).starts))
            out.append((best, end))
        prev = mem.u64(heap + 8)
        if not prev:
            break
        heap = prev
    return out


def _mmapped(mem: Memory, interval: Interval) -> list[tuple[int, int]]:
    """Mmapped chunks at the start of an anonymous mapping: (chunk, size), back to back."""
    out = []
    chunk = interval.start
    while chunk + 16 <= interval.end:
        raw = mem.read(chunk, 16)
        if len(raw) < 16:
            break
        prev_size, size = struct.unpack("<QQ", raw)
        length = size & ~SIZE_BITS
        if prev_size != 0 or not size & IS_MMAPPED or size & NON_MAIN_ARENA:
            break
        if length == 0 or length % PAGE_SIZE or chunk + length > interval.end:
            break
        out.append((chunk, length))
        chunk += length
    return out


def walk(pid: int, intervals: list[Interval]) -> Recovered:
    """Every in-use glibc block of `pid` (see the module docstring)."""
    try:
        mem = Memory(pid)
    except OSError:
        return Recovered()
    try:
        with drained_reads():
            return _walk(mem, intervals)
    finally:
        mem.close()


def _walk(mem: Memory, intervals: list[Interval]) -> Recovered:
    heaps: list[_Chunks] = []  # chunks that look in use, per heap (mmapped ones apart)
    parked: set[int] = set()
    arenas = 0
    heap = next((i for i in intervals if i.kind == "heap"), None)
    spans = {
        i.start: i.end - i.start for i in intervals if i.kind == "anon" and i.start % HEAP_MAX == 0
    }
    arena_heaps: set[int] = set()
    if heap is not None:
        main = _walk_chunks(mem, heap.start, heap.end)
        heaps.append(main)
        main_arena = _find_main_arena(mem, intervals, main.top) if main.top else None
        if main_arena is not None:
            arenas = 1
            parked |= _fastbin_parked(mem, main_arena)
            arena = mem.u64(main_arena + ARENA_NEXT)
            seen = {main_arena}
            while arena and arena not in seen and len(seen) < 4096:
                seen.add(arena)
                arenas += 1
                parked |= _fastbin_parked(mem, arena)
                for start, end in _arena_heaps(mem, arena, spans):
                    arena_heaps.add(start & ~(HEAP_MAX - 1))
                    heaps.append(_walk_chunks(mem, start, end))
                arena = mem.u64(arena + ARENA_NEXT)
    starts = np.array([c for h in heaps for c in h.starts], np.uint64)
    sizes = np.array([z for h in heaps for z in h.sizes], np.uint64)
    # Every tcache is a 0x290 chunk in some heap; the ones whose bins check out are tcaches
    # (allocator bookkeeping, not user blocks), and the chunks they hold are free.
    metadata: set[int] = set()
    for chunk in starts[sizes == TCACHE_CHUNK].tolist():
        held = _tcache_parked(mem, chunk)
        if held is not None:
            metadata.add(chunk)
            parked |= held
    mmapped = [
        found
        for interval in intervals
        if interval.kind == "anon" and interval.start not in arena_heaps
        for found in _mmapped(mem, interval)
    ]
    dropped = np.array(sorted(parked | metadata), np.uint64)
    keep = ~np.isin(starts, dropped)
    addrs = np.concatenate([starts[keep], np.array([c for c, _ in mmapped], np.uint64)]) + 16
    usable = np.concatenate(
        [sizes[keep] - 8, np.array([z for _, z in mmapped], np.uint64) - np.uint64(16)]
    )
    order = np.argsort(addrs, kind="stable")
    return Recovered(addrs=addrs[order], sizes=usable[order], arenas=arenas, parked=len(parked))
