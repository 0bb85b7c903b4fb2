"""Delay accounting's switch, ``kernel.task_delayacct``: without it ``wpcopy_count`` stays 0.

Shared by every cowtrace process on the host (switch_users.py): the first to enable it
remembers the state before, and only the last to restore puts it back.
"""

from __future__ import annotations

from pathlib import Path

from cowtrace.errors import CowtraceError
from cowtrace.switch_users import SharedSwitch

DELAYACCT_SYSCTL = Path("/proc/sys/kernel/task_delayacct")


def delayacct_enabled() -> bool:
    """Whether the kernel is counting delays (and so wpcopy_count) for new activity."""
    try:
        return DELAYACCT_SYSCTL.read_text().strip() == "1"
    except OSError:
        return False


def enable_delayacct() -> bool:
    """Turn delay accounting on; returns the previous state so a caller can restore it.

    Tasks count only what happens while it is on: enable it before the work to measure.
    Shared by every cowtrace process at once (switch_users.py): the state returned is the one
    before the first of them, and only the last one to restore puts it back.
    """
    try:
        return _DELAYACCT_USERS.acquire(_switch_delayacct_on)
    except OSError:  # no registry (/run not writable): this process alone
        return _switch_delayacct_on()


def _switch_delayacct_on() -> bool:
    before = delayacct_enabled()
    if not before:
        try:
            DELAYACCT_SYSCTL.write_text("1\n")
        except OSError as exc:
            raise CowtraceError(
                f"cannot enable delay accounting: {exc.strerror}",
                hint="sysctl kernel.task_delayacct=1 (as root)",
            ) from exc
    return before


def restore_delayacct(previous: bool) -> None:
    """Put the sysctl back to what :func:`enable_delayacct` returned, once no other cowtrace
    process uses it any more."""
    try:
        shared = _DELAYACCT_USERS.release(_switch_delayacct_off)
    except OSError:
        shared = False
    if not shared and not previous:
        _switch_delayacct_off()


def _switch_delayacct_off() -> None:
    if delayacct_enabled():
        DELAYACCT_SYSCTL.write_text("0\n")


_DELAYACCT_USERS = SharedSwitch("delayacct")
