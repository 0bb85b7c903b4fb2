"""A code object's address holding another code object later (issue 14): frames are named after
what their own process holds there, checked once per drain, never after a stale cache entry.

The traced processes are fakes: their memory is a few objects laid out as CPython 3.12 lays
them (a code object, its type, its strings), served through remote_reads.MemoryFile."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from cowtrace.host import remote_reads
from cowtrace.kernel.abi import EVENT_DTYPE, KIND_COPY
from cowtrace.python import kernel
from cowtrace.python.detect import PythonImage
from cowtrace.python.offsets import table_offsets
from cowtrace.python.tracker import PythonStacks

OFFSETS = table_offsets("3.12")
CODE_TYPE, TYPE_NAME = 0x10_0000, 0x10_1000
LEAF = 0x40_0000
PARENT, CHILD = 1000, 1001
X, Y = 0x20_0000, 0x21_0000  # code objects' addresses; X is reused
STACK = 7


class Memory:
    """Each fake process' memory: objects by address."""

    def __init__(self) -> None:
        self.objects: dict[int, dict[int, bytes]] = {}
        self.opens: list[int] = []  # memory files opened, by pid
        self.scattered: list[int] = []  # batched reads, by pid
        self._next = 0x30_0000

    def put(self, pid: int, addr: int, data: bytes) -> None:
        self.objects.setdefault(pid, {})[addr] = data

    def read(self, pid: int, addr: int, size: int) -> bytes:
        for base, data in self.objects[pid].items():
            if base <= addr < base + len(data):
                return data[addr - base : addr - base + size]
        return b""

    def string(self, pid: int, text: str) -> int:
        """A compact ASCII str object; its address."""
        o = OFFSETS
        head = bytearray(o.unicode_ascii_size)
        struct.pack_into("<q", head, o.unicode_length, len(text))
        struct.pack_into("<I", head, o.unicode_state, (1 << 2) | (1 << 5) | (1 << 6))
        data = bytes(head) + text.encode() + b"\0"
        addr, self._next = self._next, self._next + 0x1000
        self.put(pid, addr, data.ljust(o.unicode_compact_size + 8, b"\0"))
        return addr

    def code(self, pid: int, addr: int, name: str, filename: str, first: int) -> None:
        """A code object at `addr` (no location table: its frames show the first line)."""
        o = OFFSETS
        data = bytearray(o.code_code_adaptive + 16)
        struct.pack_into("<Q", data, 8, CODE_TYPE)
        struct.pack_into("<Q", data, o.code_qualname, self.string(pid, name))
        struct.pack_into("<Q", data, o.code_name, self.string(pid, name))
        struct.pack_into("<Q", data, o.code_filename, self.string(pid, filename))
        struct.pack_into("<i", data, o.code_firstlineno, first)
        self.put(pid, addr, bytes(data))

    def free(self, pid: int, addr: int) -> None:
        """What free() leaves: the first words (refcount, type) overwritten."""
        data = bytearray(self.objects[pid][addr])
        data[:16] = b"\xaa" * 16
        self.put(pid, addr, bytes(data))

    def process(self, pid: int) -> None:
        self.put(pid, CODE_TYPE, bytes(24) + struct.pack("<Q", TYPE_NAME))
        self.put(pid, TYPE_NAME, b"code".ljust(32, b"\0"))


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> Memory:
    fake = Memory()

    class FakeFile:
        def __init__(self, pid: int) -> None:
            if pid not in fake.objects:
                raise OSError("no such process")
            fake.opens.append(pid)
            self.pid = pid

        def read(self, addr: int, size: int) -> bytes:
            return fake.read(self.pid, addr, size)

        def close(self) -> None:
            pass

    def read_scattered(pid: int, addrs: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
        fake.scattered.append(pid)
        rows = [fake.read(pid, addr, size) if pid in fake.objects else b"" for addr in addrs]
        ok = np.array([len(row) == size for row in rows], bool)
        data = np.zeros((len(addrs), size), np.uint8)
        for i, row in enumerate(rows):
            data[i, : len(row)] = np.frombuffer(row, np.uint8)
        return data, ok

    monkeypatch.setattr(remote_reads, "MemoryFile", FakeFile)
    monkeypatch.setattr(remote_reads, "read_scattered", read_scattered)
    monkeypatch.setattr(remote_reads, "drain_lru_batches", lambda: None)
    return fake


def tracker(pids: list[int], raw: kernel.RawStack) -> PythonStacks:
    """A tracker whose processes share one image and whose kernel holds one stack, `raw`."""
    python = PythonStacks()
    python._bpf = object()  # bound: stacks are named; they are found in _raw
    python._raw[STACK] = raw
    image = PythonImage(pid=pids[0], version="3.12", offsets=OFFSETS, runtime=0, path="python")
    image.leaf_names[LEAF] = ("_PyEval_EvalFrameDefault", "libpython3.12.so.1.0")
    for pid in pids:
        python.images[pid] = image
    return python


def drain(python: PythonStacks, pids: list[int]) -> list[tuple[str, ...]]:
    """One drained batch: a copy by each pid with the stack; each record's frames."""
    records = np.zeros(len(pids), EVENT_DTYPE)
    records["kind"] = KIND_COPY
    records["pid"] = pids
    records["pystack_id"] = STACK
    found = python.on_fault_events(records)
    return [found.stacks[i].frames for i in found.stack.tolist()]


RAW = kernel.RawStack(leaf_ip=LEAF, flags=0, codes=(X, Y), instrs=(None, None))


def test_an_address_reused_by_another_code_object_is_named_anew(memory: Memory) -> None:
    memory.process(PARENT)
    memory.code(PARENT, X, "handler_a", "app.py", 10)
    memory.code(PARENT, Y, "<module>", "app.py", 1)
    python = tracker([PARENT], RAW)
    assert drain(python, [PARENT]) == [("handler_a (app.py:10)", "<module> (app.py:1)")]

    # handler_a freed, handler_b compiled at the same address: the same kernel stack.
    memory.code(PARENT, X, "handler_b", "app.py", 20)
    assert drain(python, [PARENT]) == [("handler_b (app.py:20)", "<module> (app.py:1)")]

    # Unchanged since: the fingerprints are read, in one go for the process, and nothing else.
    memory.opens.clear()
    memory.scattered.clear()
    assert drain(python, [PARENT]) == [("handler_b (app.py:20)", "<module> (app.py:1)")]
    assert (memory.scattered, memory.opens) == ([PARENT], [])

    # handler_b freed and nothing there: the frame ran the code object last seen there.
    memory.free(PARENT, X)
    assert drain(python, [PARENT]) == [("handler_b (app.py:20)", "<module> (app.py:1)")]

    # Back to the first object's fingerprint (a cached one): named from the cache.
    memory.code(PARENT, X, "handler_a", "app.py", 10)
    assert drain(python, [PARENT]) == [("handler_a (app.py:10)", "<module> (app.py:1)")]


def test_parent_and_child_with_other_code_at_one_address(memory: Memory) -> None:
    """A child compiled other code at an address its parent has its own code at: in one
    drain, each process' copies are named after its own code."""
    for pid in (PARENT, CHILD):
        memory.process(pid)
        memory.code(pid, Y, "<module>", "app.py", 1)
    memory.code(PARENT, X, "parent_work", "app.py", 30)
    memory.code(CHILD, X, "<lambda>", "<string>", 1)
    python = tracker([PARENT, CHILD], RAW)
    assert drain(python, [PARENT, CHILD, PARENT]) == [
        ("parent_work (app.py:30)", "<module> (app.py:1)"),
        ("<lambda> (<string>:1)", "<module> (app.py:1)"),
        ("parent_work (app.py:30)", "<module> (app.py:1)"),
    ]
    assert sorted(memory.scattered) == [PARENT, CHILD]  # fingerprints: one read per process


def test_a_new_stack_keeps_the_code_read_when_it_was_announced(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module's body runs once and is freed once imported; the next module's code may be
    allocated at its address before the drain.  The stack is new: its copies are named after
    the code objects read when the kernel announced it."""
    memory.process(PARENT)
    memory.code(PARENT, X, "<module>", "first.py", 1)
    memory.code(PARENT, Y, "_call_with_frames_removed", "<frozen importlib._bootstrap>", 480)
    python = tracker([PARENT], RAW)
    del python._raw[STACK]
    monkeypatch.setattr(kernel, "read_stack", lambda _bpf, stack_id: RAW)
    python._on_new_stack(0, PARENT, STACK)
    memory.code(PARENT, X, "helper", "second.py", 7)  # first's body freed; second's code
    expected = (
        "<module> (first.py:1)",
        "_call_with_frames_removed (<frozen importlib._bootstrap>:480)",
    )
    assert drain(python, [PARENT]) == [expected]
    # The same stack again, a drain later: what the process holds now wrote it.
    assert drain(python, [PARENT])[0][0] == "helper (second.py:7)"
