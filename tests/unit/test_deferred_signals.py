"""cowtrace/deferred_signals.py: a stop signal that arrives while C code calls back into Python
is delivered after the block, as one KeyboardInterrupt, not lost in a callback."""

from __future__ import annotations

import ctypes
import os
import signal

import pytest

from cowtrace.deferred_signals import deferred_stop_signals
from cowtrace.kernel import uprobes

COMPARE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@pytest.fixture(autouse=True)
def interrupt_raises():
    """SIGINT raising KeyboardInterrupt, as in cowtrace from its entry point on (a suite started
    in the background has it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def sort_with_interrupt(values: list[int]) -> tuple[list[int], int]:
    """libc's qsort over `values`, its comparison a Python callback that sends this process
    SIGINT on its first call (as a terminal's Ctrl-C landing in bcc's symbol scan)."""
    array = (ctypes.c_int * len(values))(*values)
    calls = 0

    def compare(a: int, b: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            os.kill(os.getpid(), signal.SIGINT)
        left, right = ctypes.c_int.from_address(a).value, ctypes.c_int.from_address(b).value
        return (left > right) - (left < right)

    libc = ctypes.CDLL(None)
    libc.qsort(array, len(values), ctypes.sizeof(ctypes.c_int), COMPARE(compare))
    return list(array), calls


def test_a_callback_runs_whole_and_the_interrupt_comes_after(capfd) -> None:
    values = [5, 3, 9, 1, 7, 2, 8]
    with pytest.raises(KeyboardInterrupt), deferred_stop_signals():
        done, calls = sort_with_interrupt(values)
        assert done == sorted(values) and calls > 1
    assert "Exception ignored" not in capfd.readouterr().err
    assert not signal.sigpending()


def test_the_allocator_scan_is_not_interrupted_halfway(monkeypatch) -> None:
    """A SIGINT during the symbol scan: the scan finishes, then the stop is raised."""
    finished = []

    def scan(path: bytes, pattern: bytes) -> list[tuple[bytes, int]]:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the Python work of a scan, where the interrupt used to land
            pass
        finished.append(path)
        return [(b"malloc", 0x1000), (b"free", 0x2000)]

    from bcc import BPF

    monkeypatch.setattr(BPF, "get_user_functions_and_addresses", staticmethod(scan))
    with pytest.raises(KeyboardInterrupt):
        uprobes._defined_functions("/lib/libc.so.6", "")
    assert finished == [b"/lib/libc.so.6"]
