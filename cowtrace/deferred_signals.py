"""Stop signals held back around code that must not be interrupted by an exception.

Why: until a command's StopSignals handlers are in place (commands/common.py), Ctrl-C is a
KeyboardInterrupt, raised wherever the main thread stands.  Two kinds of places cannot take
it.  A Python function that C code calls back (bcc's symbol scan calls one per symbol of the
file, its ring buffers one per record): ctypes cannot pass the exception through C, so it
prints a traceback, drops the interrupt and returns to C, which goes on.  A Ctrl-C at
`cowtrace run`'s start-up, in the scan of libc's symbols for the allocator probes, did just
that (the probes then failed to attach, and the stop was lost).  And a step that must finish
once begun (the launcher's spawn and the note of its pid).

Blocking the signals in the thread's mask is not enough: a process-directed signal then goes
to another thread of cowtrace's (it has several), whose C handler only flags it, and the main
thread still runs the Python handler at its next instruction, in the callback.  So the main
thread's handlers are swapped for one that notes the signal, and each signal noted is raised
again once the old handlers are back, at a point that can take the exception.  Other threads
need nothing: Python runs signal handlers in the main thread only.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def deferred_stop_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP noted during the block and raised again after it, each once,
    with the handlers (or default actions) they had before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        arrived.append(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, which could not put it back
            previous[signum] = signal.signal(signum, note)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)
