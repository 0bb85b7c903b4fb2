"""Issue 14: a code object freed and another allocated at its address must not lend the first
one's name.  resolve.code_info / frame_name and the tracker's naming of new stacks against a
fake family of processes (each a sparse memory holding hand-made CPython 3.12 objects)."""

from __future__ import annotations

import struct

import pytest

from cowtrace.host import remote_reads
from cowtrace.python import kernel, tracker
from cowtrace.python.detect import PythonImage
from cowtrace.python.offsets import table_offsets
from cowtrace.python.resolve import frame_name, new_stack_names

OFFSETS = table_offsets("3.12")
CODE = 0x7F00_0000_1000  # the address both code objects take, one after the other
TYPE, TYPE_NAME = 0x7F00_0000_8000, 0x7F00_0000_8100
ASCII_STATE = (1 << 2) | (1 << 5) | (1 << 6)  # kind 1, compact, ascii
LEAF = 0x4000


class Memory:
    """One process' memory: bytes at addresses, nothing else readable."""

    def __init__(self) -> None:
        self.regions: dict[int, bytearray] = {}
        self.put(TYPE, b"\0" * 24 + struct.pack("<Q", TYPE_NAME))
        self.put(TYPE_NAME, b"code\0" + b"\0" * 11)

    def put(self, addr: int, data: bytes) -> None:
        self.regions[addr] = bytearray(data)

    def string(self, addr: int, text: str) -> None:
        head = bytearray(OFFSETS.unicode_ascii_size)
        struct.pack_into("<q", head, OFFSETS.unicode_length, len(text))
        struct.pack_into("<I", head, OFFSETS.unicode_state, ASCII_STATE)
        self.put(addr, bytes(head) + text.encode().ljust(32, b"\0"))  # as pymalloc's blocks

    def code(self, name: str, filename: str, first: int, strings: int) -> None:
        """A code object at CODE named `name`, its two strings at `strings` and after."""
        self.string(strings, name)
        self.string(strings + 0x100, filename)
        head = bytearray(OFFSETS.code_code_adaptive)
        struct.pack_into("<QQ", head, 8, TYPE, 8)  # ob_type, ob_size
        struct.pack_into("<i", head, OFFSETS.code_firstlineno, first)
        struct.pack_into("<Q", head, OFFSETS.code_qualname, strings)
        struct.pack_into("<Q", head, OFFSETS.code_filename, strings + 0x100)
        self.put(CODE, bytes(head))  # co_linetable 0: frames show the first line

    def read(self, addr: int, size: int) -> bytes | None:
        for start, data in self.regions.items():
            if start <= addr and addr + size <= start + len(data):
                return bytes(data[addr - start : addr - start + size])
        return None


class FakeReader(remote_reads.Reader):
    """remote_reads.Reader over fake processes (None: exited), counting the reads."""

    def __init__(self, family: dict[int, Memory | None], pids: list[int], log: list) -> None:
        super().__init__(pids)
        self.family, self.log = family, log

    def read(self, addr: int, size: int) -> bytes | None:
        for pid in self.pids:
            memory = self.family.get(pid)
            data = memory.read(addr, size) if memory is not None else None
            self.log.append((pid, addr))
            if data is not None:
                return data
        return None

    def read_many(self, runs: list[tuple[int, int]]) -> list[bytes | None]:
        return [self.read(addr, size) for addr, size in runs]

    def first(self) -> FakeReader:
        return FakeReader(self.family, self.pids[:1], self.log)

    def only(self, pid: int) -> FakeReader:
        return FakeReader(self.family, [pid], self.log)


def image() -> PythonImage:
    return PythonImage(pid=1, version="3.12", offsets=OFFSETS, runtime=0x1, path="python")


@pytest.fixture
def family() -> dict[int, Memory | None]:
    """Parent 1 and its children 2 and 3, all with `first` at CODE (made before the fork)."""
    memories: dict[int, Memory | None] = {}
    for pid in (1, 2, 3):
        memories[pid] = Memory()
        memories[pid].code("first", "<first>", 10, 0x7F00_0000_2000)
    return memories


def name(img: PythonImage, family: dict, pids: list[int], log: list, new: bool) -> str | None:
    """The frame's name on a stack seen for the first time (`new`), else on a known one."""
    reader = FakeReader(family, pids, log)
    if new:
        return new_stack_names(img, pids, (CODE,), (None,), reader)[0]
    return frame_name(img, pids, CODE, None, reader)


def test_same_object_on_a_new_stack_costs_one_small_read(family):
    img, log = image(), []
    assert name(img, family, [2, 1], log, new=True) == "first (<first>:10)"
    log.clear()
    assert name(img, family, [3, 1], log, new=True) == "first (<first>:10)"
    assert log == [(3, CODE + 8)]  # the fingerprint, from the writer
    log.clear()
    assert name(img, family, [3, 1], log, new=False) == "first (<first>:10)"
    assert log == []  # a known stack: the cache


def test_another_object_at_the_address_is_read_anew_from_the_writer(family):
    img, log = image(), []
    assert name(img, family, [2, 1], log, new=True) == "first (<first>:10)"
    family[3].code("second", "<second>", 20, 0x7F00_0000_3000)  # child 3's own, after the fork
    assert name(img, family, [3, 1, 2], log, new=True) == "second (<second>:20)"
    assert name(img, family, [2, 1], log, new=True) == "first (<first>:10)"  # and back
    # Only the file name's string moved (same size, first line, name): still told apart.
    family[3].code("first", "<other>", 10, 0x7F00_0000_2000)
    family[3].string(0x7F00_0000_4000, "<other>")
    head = bytearray(family[3].regions[CODE])
    struct.pack_into("<Q", head, OFFSETS.code_filename, 0x7F00_0000_4000)
    family[3].put(CODE, bytes(head))
    assert name(img, family, [3, 1], log, new=True) == "first (<other>:10)"


def test_a_writer_gone_is_named_from_the_cache_not_a_sibling(family):
    img, log = image(), []
    assert name(img, family, [2, 1], log, new=True) == "first (<first>:10)"
    family[2] = None  # child 2 exited
    family[1].code("second", "<second>", 20, 0x7F00_0000_3000)  # the parent moved on
    log.clear()
    assert name(img, family, [2, 1, 3], log, new=True) == "first (<first>:10)"
    assert {pid for pid, _ in log} == {2}  # the sibling and parent were not asked


def test_nothing_cached_and_the_writer_gone_reads_the_family(family):
    img, log = image(), []
    family[2] = None
    assert name(img, family, [2, 1], log, new=True) == "first (<first>:10)"
    family[1] = None
    assert name(img, family, [2, 1], log, new=True) == "first (<first>:10)"  # cached now


def test_an_unreadable_changed_object_is_not_named_after_the_old_one(family):
    """The writer's fingerprint differs, then its object cannot be read whole: no name (and
    the old one is gone from the cache), never the first object's."""
    img, log = image(), []
    assert name(img, family, [2, 1], log, new=True) == "first (<first>:10)"
    family[3].code("second", "<second>", 20, 0x7F00_0000_3000)
    del family[3].regions[0x7F00_0000_3000]  # its name's string: unreadable
    assert name(img, family, [3, 1], log, new=True) == ""  # dropped, never `first`
    assert img.code_infos[CODE].name == ""


def tracker_over_family(**options: float) -> tuple[tracker.PythonStacks, PythonImage]:
    """A tracker as if bound, processes 1-3 of one image, its native leaf named."""
    python = tracker.PythonStacks(**options)
    python._bpf = object()
    img = image()
    img.leaf_names[LEAF] = ("memset", "libc.so.6")
    img.leaf_mappings[LEAF] = None
    for pid in (1, 2, 3):
        python.images[pid] = img
    return python, img


def test_each_new_stack_keeps_the_names_of_its_own_moment(family, monkeypatch):
    """The tracker binds a new stack's names when it is noted: a second stack with another
    object at the address does not rename the first at the drain."""
    log: list = []
    monkeypatch.setattr(
        tracker.remote_reads,
        "Reader",
        lambda pids, **_: FakeReader(family, pids, log),
    )
    stacks = {
        1: kernel.RawStack(LEAF, 0, (CODE,), (None,)),
        2: kernel.RawStack(LEAF, 0, (CODE,), (4,)),
    }
    monkeypatch.setattr(kernel, "read_stack", lambda _bpf, stack_id: stacks.get(stack_id))
    python, img = tracker_over_family()
    python._on_new_stack(img.runtime, 2, 1)  # child 2 runs `first`
    family[3].code("second", "<second>", 20, 0x7F00_0000_3000)
    python._on_new_stack(img.runtime, 3, 2)  # child 3 runs `second` at the same address
    assert python._resolve(2, 1).frames == ("first (<first>:10)",)
    assert python._resolve(3, 2).frames == ("second (<second>:20)",)


def test_a_bunch_reads_each_writer_fingerprint_once(family):
    """The stacks of one bunch of notes were all captured before the first read: a code object
    the bunch's earlier stacks fingerprinted in the same writer is not read again."""
    img, log, prints = image(), [], {}
    reader = FakeReader(family, [2, 1], log)
    assert new_stack_names(img, [2, 1], (CODE,), (None,), reader, prints) == ("first (<first>:10)",)
    log.clear()
    assert (
        new_stack_names(img, [2, 1], (CODE, CODE), (None, 4), reader, prints)
        == ("first (<first>:10)",) * 2
    )
    assert log == []


class Vanishing(Memory):
    """A process that exits right after its first read (the fingerprint of a new stack)."""

    def __init__(self, base: Memory) -> None:
        super().__init__()
        self.regions, self.reads = base.regions, 0

    def read(self, addr: int, size: int) -> bytes | None:
        self.reads += 1
        return super().read(addr, size) if self.reads == 1 else None


def test_a_writer_exiting_while_read_is_named_from_a_process_with_the_same_object(family):
    """The writer's fingerprint was read, then it exited before the object's name and line
    table: the object is read from the first other process whose object has the same
    fingerprint (child 3's own, different object is passed over), not cached half read."""
    img, log = image(), []
    family[2] = Vanishing(family[2])
    family[3].code("second", "<second>", 20, 0x7F00_0000_3000)
    assert name(img, family, [2, 3, 1], log, new=True) == "first (<first>:10)"
    assert img.code_infos[CODE].name == "first"


@pytest.fixture
def aging(family, monkeypatch):
    """A tracker over `family`, its kernel table of stacks a dict (stack 1: CODE at instruction
    4), age_stacks' deletions applied to it."""
    log: list = []
    monkeypatch.setattr(
        tracker.remote_reads, "Reader", lambda pids, **_: FakeReader(family, pids, log)
    )
    table = {1: kernel.RawStack(LEAF, 0, (CODE,), (4,))}
    monkeypatch.setattr(kernel, "read_stack", lambda _bpf, stack_id: table.get(stack_id))
    monkeypatch.setattr(
        kernel, "forget_stacks", lambda _bpf, ids: [table.pop(i, None) for i in ids]
    )
    python, img = tracker_over_family(stack_age_s=10.0)
    return python, table, img


@pytest.mark.parametrize("announced", [True, False])
def test_a_stack_through_a_reused_address_is_named_again_after_its_age(family, aging, announced):
    """A stack through a code address that another object took has the old stack's id in the
    kernel (the same addresses and instructions): it is not announced, and keeps the old
    names.  After age_stacks deleted the known stacks, its next capture is stored anew and
    named against the writer's memory: by the watcher when it announces it (`announced`),
    else by the drain."""
    python, table, img = aging
    python._on_new_stack(img.runtime, 2, 1)  # child 2 runs `first`
    assert python._resolve(2, 1).frames == ("first (<first>:10)",)
    family[3].code("second", "<second>", 20, 0x7F00_0000_3000)  # then the address is `second`'s
    assert python._resolve(3, 1).frames == ("first (<first>:10)",)  # the same id: the limit
    python.age_stacks(python._next_age - 1)
    assert 1 in table  # not yet: one period
    python.age_stacks(python._next_age)
    assert 1 not in table
    table[1] = kernel.RawStack(LEAF, 0, (CODE,), (4,))  # child 3 writes again: stored anew
    if announced:
        python._on_new_stack(img.runtime, 3, 1)
    assert python._resolve(3, 1).frames == ("second (<second>:20)",)


def test_a_stack_not_captured_for_a_period_is_dropped(family, aging):
    """Deleted from the kernel at one round, not captured again before the next: its raw
    frames go then (no record can carry it any more); one captured again stays."""
    python, table, img = aging
    table[2] = kernel.RawStack(LEAF, 0, (CODE, CODE), (4, 6))
    python._on_new_stack(img.runtime, 2, 1)
    python._on_new_stack(img.runtime, 2, 2)
    python.age_stacks(python._next_age)
    assert table == {} and set(python._raw) == {1, 2}  # a late record can still be named
    table[2] = kernel.RawStack(LEAF, 0, (CODE, CODE), (4, 6))
    python._on_new_stack(img.runtime, 2, 2)  # captured again
    python.age_stacks(python._next_age)
    assert set(python._raw) == {2}
    assert python._resolve(2, 2).frames == ("first (<first>:10)",) * 2
