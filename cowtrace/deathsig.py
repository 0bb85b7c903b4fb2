"""Children cowtrace forks die with it: PR_SET_PDEATHSIG, and the race it leaves, closed.

Why: a forked copy of cowtrace holds every file descriptor cowtrace had (its BPF programs
included) and would go on with its work after cowtrace was killed. The death signal is sent
when the parent *thread* exits, and only if the parent was still alive when it was set; so
the child sets it first, then checks that its parent is still the one that forked it.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child just forked by `parent`: be killed when it exits; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
