"""Which Python type each live block of a pymalloc pool holds, from the object's header.

An object is `ob_refcnt, ob_type, ...`; a block may hold it at its very start, after a GC
head (types with Py_TPFLAGS_HAVE_GC), or after a GC head and a pre-header (instances of
Python classes with a managed __dict__, ObjectLayout.object_offsets).  A block is taken to
hold an object of type T at offset c when its word at c is a plausible reference count, its
word at c + 8 is T, T's own flags put its objects at exactly c, and T's basic size fits the
block.  Types are read from the target once per (pid, type address) and kept in a TypeTable,
the addresses that are no type too (a block of raw PyMem_Malloc data offers such words), so
after the first pages a batch of pools is classified with a few vectorised lookups and no
read at all.

A type's name: `tp_name` for static types (`dict`, `collections.OrderedDict`); for heap types
(classes) `__module__` + "." + `__qualname__`, `__module__` looked up in the class' dict
(usually its first key, so a few reads), `__qualname__` from the heap type's ht_qualname.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cowtrace.host import remote_reads
from cowtrace.host.memory import PAGE_SIZE, USER_ADDRESS_END
from cowtrace.python.detect import PythonImage
from cowtrace.python.pools import ObjectLayout
from cowtrace.python.resolve import _unicode

HAVE_GC = 1 << 14  # Py_TPFLAGS_HAVE_GC
HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE
TYPE_SUBCLASS = 1 << 31  # Py_TPFLAGS_TYPE_SUBCLASS: set on `type` and every metaclass
MAX_BASICSIZE = 1 << 20
MAX_REFCNT = 1 << 40  # above: a pointer, not a count (user addresses are far higher)
MIN_POINTER = 1 << 16
MAX_DICT_ENTRIES = 256  # a class dict scanned for __module__ at most this far
MAX_NEGATIVE = 1 << 16  # addresses known to be no type, kept per pid before starting over
NEW_TYPES_PER_BATCH = 512  # candidate addresses read per batch at most, most frequent first


@dataclass(frozen=True)
class TypeInfo:
    name: str
    offset: int  # where its objects start in a block: GC head and pre-header before them
    basicsize: int


TypeReader = Callable[[int], "TypeInfo | None"]  # reads the type object at an address


class TypeNames:
    """A dense id per type name, shared by every process (the tallies are arrays by id)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def id(self, name: str) -> int:
        found = self.ids.get(name)
        if found is None:
            found = self.ids[name] = len(self.names)
            self.names.append(sys.intern(name))
        return found


class TypeTable:
    """One process' types by address (None: read, and not a type), with arrays for
    vectorised lookups rebuilt when an address was added: the entries sorted by address,
    and an open-addressing hash of them (a block's type word is looked up in a few array
    operations, however many non-types the table holds: a binary search costs one pass
    per halving)."""

    def __init__(self, names: TypeNames) -> None:
        self.names = names
        self.infos: dict[int, TypeInfo | None] = {}
        self.hits: dict[int, int] = {}  # blocks matched per object offset (tried first)
        self._negative = 0
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._hash: _AddressHash | None = None

    def add(self, addr: int, info: TypeInfo | None) -> None:
        if info is None:
            self._negative += 1
            if self._negative > MAX_NEGATIVE:  # bounded: forget the non-types, keep types
                self.infos = {a: i for a, i in self.infos.items() if i is not None}
                self._negative = 1
        self.infos[addr] = info
        self._arrays = self._hash = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(addresses sorted, offset (-1: no type), basic size, name id) of every entry."""
        if self._arrays is None:
            count, infos = len(self.infos), list(self.infos.values())
            addrs = np.fromiter(self.infos, np.uint64, count)
            offset = np.fromiter((i.offset if i else -1 for i in infos), np.int64, count)
            basic = np.fromiter((i.basicsize if i else 0 for i in infos), np.int64, count)
            ids = np.fromiter((self.names.id(i.name) if i else -1 for i in infos), np.int64, count)
            order = np.argsort(addrs, kind="stable")
            self._arrays = (addrs[order], offset[order], basic[order], ids[order])
        return self._arrays

    def lookup(self, words: np.ndarray) -> np.ndarray:
        """Each word's place in :meth:`arrays` (-1: no entry for it)."""
        if self._hash is None:
            self._hash = _AddressHash(self.arrays()[0])
        return self._hash.find(words)


class _AddressHash:
    """Distinct addresses hashed into twice as many slots (linear probing, built once, never
    deleted from), for lookups of many words at once: each round looks every word up at its
    next slot, and a word stops at its address or at an empty slot."""

    def __init__(self, addrs: np.ndarray) -> None:
        self.addrs = addrs
        self.bits = max(4, (2 * len(addrs)).bit_length())
        self.mask = np.uint64((1 << self.bits) - 1)
        self.entry = np.full(1 << self.bits, -1, np.int64)  # slot -> index in addrs
        self.key = np.zeros(1 << self.bits, np.uint64)  # slot -> its address
        self.rounds = 0  # the longest probe, in slots: lookups stop there
        pending = np.arange(len(addrs))
        slot = self._home(addrs)
        while len(pending):
            self.rounds += 1
            empty = self.entry[slot] < 0
            # of the entries reaching the same empty slot, the first takes it
            taken, first = np.unique(slot[empty], return_index=True)
            placed = np.flatnonzero(empty)[first]
            self.entry[taken] = pending[placed]
            self.key[taken] = addrs[pending[placed]]
            left = np.ones(len(pending), bool)
            left[placed] = False
            pending, slot = pending[left], (slot[left] + np.uint64(1)) & self.mask

    def _home(self, words: np.ndarray) -> np.ndarray:
        """Fibonacci hashing of the word's 8-byte unit (object addresses are aligned)."""
        mixed = (words >> np.uint64(3)) * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2**64
        return mixed >> np.uint64(64 - self.bits)

    def find(self, words: np.ndarray) -> np.ndarray:
        words = np.asarray(words, np.uint64)
        if not self.rounds:
            return np.full(len(words), -1, np.int64)
        # the first round over every word (most stop at their home slot), then the others
        slot = self._home(words)
        entry = self.entry[slot]
        match = (self.key[slot] == words) & (entry >= 0)
        out = np.where(match, entry, -1)
        todo = np.flatnonzero(~match & (entry >= 0))  # occupied by another address: go on
        words, slot = words[todo], (slot[todo] + np.uint64(1)) & self.mask
        for _ in range(self.rounds - 1):
            if not len(todo):
                break
            entry = self.entry[slot]
            match = (self.key[slot] == words) & (entry >= 0)
            out[todo[match]] = entry[match]
            go = ~match & (entry >= 0)
            todo, words, slot = todo[go], words[go], (slot[go] + np.uint64(1)) & self.mask
        return out

def read_type(
    reader: remote_reads.Reader, image: PythonImage, layout: ObjectLayout, addr: int
) -> TypeInfo | None:
    """The type object at `addr`, or None when it is not one."""
    if not MIN_POINTER <= addr < USER_ADDRESS_END or addr % 8:
        return None
    head = reader.read(addr, layout.type_dict + 8)
    if head is None:
        return None
    refcnt, meta = struct.unpack_from("<qQ", head, 0)
    name_ptr, basicsize, itemsize = struct.unpack_from("<Qqq", head, layout.type_name)
    flags = struct.unpack_from("<Q", head, layout.type_flags)[0]
    if refcnt < 1 or not 16 <= basicsize <= MAX_BASICSIZE or not 0 <= itemsize <= MAX_BASICSIZE:
        return None
    meta_flags = reader.u64(meta + layout.type_flags) if meta >= MIN_POINTER else None
    if meta_flags is None or not meta_flags & TYPE_SUBCLASS:
        return None
    name = reader.cstring(name_ptr, 128) if name_ptr >= MIN_POINTER else None
    if not name or not name.isprintable():
        return None
    if flags & HEAPTYPE:
        name = _heap_type_name(reader, image, layout, addr, head, name)
    offset = (layout.gc_head_size if flags & HAVE_GC else 0) + (
        layout.preheader_size if flags & layout.preheader_flags else 0
    )
    return TypeInfo(name, offset, basicsize)


def _heap_type_name(
    reader: remote_reads.Reader,
    image: PythonImage,
    layout: ObjectLayout,
    addr: int,
    head: bytes,
    tp_name: str,
) -> str:
    """`module.qualname` of a class; parts that cannot be read fall back to tp_name."""
    qualname_ptr = reader.u64(addr + layout.heaptype_qualname)
    qualname = _unicode(reader, image, qualname_ptr) if qualname_ptr else None
    qualname = qualname or tp_name
    if "." in tp_name and qualname == tp_name.rsplit(".", 1)[-1]:
        return tp_name  # a C extension's heap type names its module itself
    module = _dict_str(reader, image, layout, struct.unpack_from("<Q", head, layout.type_dict)[0])
    if not module or module == "builtins":
        return qualname
    return f"{module}.{qualname}"


def _dict_str(
    reader: remote_reads.Reader, image: PythonImage, layout: ObjectLayout, dict_addr: int
) -> str | None:
    """The str value of "__module__" in the dict at `dict_addr` (a class' tp_dict)."""
    if not MIN_POINTER <= dict_addr < USER_ADDRESS_END:
        return None
    keys = reader.u64(dict_addr + layout.dict_keys)
    head = reader.read(keys, layout.keys_indices) if keys else None
    if head is None:
        return None
    log2_index_bytes = head[layout.keys_log2_index_bytes]
    kind = head[layout.keys_kind]
    nentries = struct.unpack_from("<q", head, layout.keys_nentries)[0]
    if log2_index_bytes > 24 or not 0 <= nentries <= MAX_DICT_ENTRIES:
        return None
    entry = 16 if kind else 24  # PyDictUnicodeEntry (key, value) or PyDictKeyEntry (+hash)
    key_at = 0 if kind else 8
    start = keys + layout.keys_indices + (1 << log2_index_bytes)
    table = reader.read(start, nentries * entry) if nentries else None
    if table is None:
        return None
    for index in range(nentries):
        key, value = struct.unpack_from("<QQ", table, index * entry + key_at)
        if key and _unicode(reader, image, key) == "__module__":
            return _unicode(reader, image, value) if value else None
    return None


@dataclass
class Blocks:
    """The live blocks of a batch of pools: pool (row of `words`), offset in it, size."""

    pool: np.ndarray
    offset: np.ndarray
    size: np.ndarray


def classify(
    words: np.ndarray,
    blocks: Blocks,
    table: TypeTable,
    layout: ObjectLayout,
    read: TypeReader,
) -> np.ndarray:
    """The type name id of every block (-1: no object recognised).  `words` holds each
    pool's bytes as little-endian words, one pool per row; `read` reads an unknown type.

    The object offsets are tried in the order that matched most often so far (each block
    stops at its first match), then the candidate words no table entry knows are read, once,
    and the blocks still unresolved tried again."""
    flat = words.reshape(-1)
    start = blocks.pool * words.shape[1] + (blocks.offset >> 3)  # block's first word
    result = np.full(len(start), -1, np.int64)
    offsets = sorted(layout.object_offsets(), key=lambda c: -table.hits.get(c, 0))
    for attempt in range(2):
        addrs, offset, basic, ids = table.arrays()
        # the blocks not matched yet, with their first word and size (carried, not gathered
        # again for each offset)
        pending, first, size = np.arange(len(start)), start, blocks.size
        tried: list[tuple[np.ndarray, np.ndarray]] = []
        for c in offsets:
            fits = size >= c + 16
            if fits.all():  # usually: no copies of the arrays
                idx, at, room = pending, first + (c >> 3), size
            else:
                idx, at, room = pending[fits], first[fits] + (c >> 3), size[fits]
            # 1 <= refcnt < MAX_REFCNT, in one comparison (0 wraps around)
            plausible = flat[at] - np.uint64(1) < np.uint64(MAX_REFCNT - 1)
            idx, at, room = idx[plausible], at[plausible], room[plausible]
            type_words = flat[at + 1]
            if len(addrs):
                pos = table.lookup(type_words)
                known = pos >= 0
                ok = known & (offset[pos] == c) & (basic[pos] + c <= room)
                result[idx[ok]] = ids[pos[ok]]
                table.hits[c] = table.hits.get(c, 0) + int(ok.sum())
                unknown = ~known
                idx, type_words = idx[unknown], type_words[unknown]
                still = result[pending] < 0
                pending, first, size = pending[still], first[still], size[still]
            tried.append((idx, type_words))
        if attempt or not len(pending):
            break
        # Unknown words of blocks no known type matched: read each once (then known), the
        # most frequent first.  A type pointer recurs in every block of its objects (all the
        # dicts of a table), while the words that only look like one at a wrong offset (a
        # dict's version tag after its `used` count) are mostly unique: in ascending order
        # they used up the batch's reads before PyDict_Type's address came up.
        new = [words_[result[idx_] < 0] for idx_, words_ in tried]
        if not new:
            break
        fresh, counts = np.unique(np.concatenate(new), return_counts=True)
        if not len(fresh):
            break
        likeliest = fresh[np.argsort(-counts, kind="stable")]
        for addr in likeliest[:NEW_TYPES_PER_BATCH].tolist():
            table.add(addr, read(addr))
    return result


@dataclass
class Apportioned:
    """Bytes and object counts per (pool, page of the pool, type id)."""

    pool: np.ndarray
    page: np.ndarray
    type_id: np.ndarray
    nbytes: np.ndarray
    objects: np.ndarray


def apportion(
    blocks: Blocks, type_ids: np.ndarray, copied: np.ndarray, pages_per_pool: int
) -> Apportioned:
    """A copied page's bytes go to the objects on it: a block partly on the page counts its
    bytes on the page, and an object counts once, on the page holding its block's start.
    `copied[pool, page]` is how many times that page was copied (0: not); blocks of type -1
    (no object) are left out, as are pages no object covers.

    Summed with bincounts over (copied page, type present) slots: one over the blocks, on
    the page holding each one's start, one over the few that run into the next page.  No
    sort."""
    keep = type_ids >= 0
    pool, start, size, tid = blocks.pool, blocks.offset, blocks.size, type_ids
    if not keep.all():
        pool, start, size, tid = pool[keep], start[keep], size[keep], tid[keep]
    if not len(tid):
        empty = np.zeros(0, np.int64)
        return Apportioned(empty, empty, empty, empty, empty)
    flat = copied.reshape(-1)
    pages = np.flatnonzero(flat)  # copied pages, as pool * per_pool + page
    slot_of = np.full(flat.size, -1, np.int64)
    slot_of[pages] = np.arange(len(pages))
    present = np.flatnonzero(np.bincount(tid))
    ntypes = len(present)
    local = np.zeros(int(present[-1]) + 1, np.int64)
    local[present] = np.arange(ntypes)
    ltid = local[tid]
    bins = len(pages) * ntypes
    shift = PAGE_SIZE.bit_length() - 1  # a page is a power of two: shifts, not divisions
    base = pool * pages_per_pool + (start >> shift)
    room = PAGE_SIZE - (start & (PAGE_SIZE - 1))  # the block's bytes on its first page
    on_first = np.minimum(size, room)
    slot = slot_of[base]
    mine = slot >= 0
    key = slot[mine] * ntypes + ltid[mine]
    once = flat.max() == 1  # every page copied once (else weighed by its copies)
    times = None if once else flat[base[mine]]
    nbytes = np.bincount(key, weights=on_first[mine] if once else on_first[mine] * times,
                         minlength=bins)  # fmt: skip
    objects = np.bincount(key, weights=times, minlength=bins)
    over = np.flatnonzero(size > room)  # blocks running into the next page (of their pool)
    if len(over):
        after = np.minimum(base[over] + 1, flat.size - 1)
        slot = slot_of[after]
        mine = slot >= 0
        key = slot[mine] * ntypes + ltid[over[mine]]
        rest = (size[over] - on_first[over])[mine] * flat[after[mine]]
        # not in place: a bincount of no keys is of integers whatever its weights
        nbytes = nbytes + np.bincount(key, weights=rest, minlength=bins)
    used = np.flatnonzero(nbytes)
    page_key = pages[used // ntypes]
    return Apportioned(
        pool=page_key // pages_per_pool,
        page=page_key % pages_per_pool,
        type_id=present[used % ntypes],
        nbytes=nbytes[used].astype(np.int64),
        objects=objects[used].astype(np.int64),
    )
