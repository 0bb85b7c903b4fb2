"""A traced process' own view of files and pids, for targets in containers.

A process in other mount and pid namespaces (a container, `unshare`) names its files and its
pid as it sees them: /proc/PID/maps and /proc/PID/exe give paths in its mount namespace (its
script, its libraries, a file it mapped), which on the host may not exist or may be another
file altogether.  The kernel offers its view through the magic link /proc/PID/root: a path
opened under it is resolved from the process' root, through its mounts.  So cowtrace opens a
member's files as `root_prefix(pid) + path` and keeps showing `path` (the container's name).

A process that shares cowtrace's root and mount namespace (every non-container target) gets
the empty prefix: its paths are opened as they are, as before, and keep working after it
exits (a prefix under /proc/PID is gone with the process).

Its pid inside the container comes from the NSpid line of /proc/PID/status (its pid in each
pid namespace from the one of this /proc down to its own): shown beside the host pid.
"""

from __future__ import annotations

import os


def _same(a: str, b: str) -> bool:
    """Whether two paths are the same object (st_dev and st_ino)."""
    first, second = os.stat(a), os.stat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def root_prefix(pid: int) -> str:
    """The empty string when `pid` sees the file system as cowtrace does (same root, same mount
    namespace), else "/proc/PID/root", to put before each path the process names.  "" for a
    process that is gone (nothing better is left: its paths are tried as they are)."""
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt") and _same(
            f"/proc/{pid}/root", "/proc/self/root"
        ):
            return ""
    except OSError:
        return ""
    return f"/proc/{pid}/root"


def host_path(pid: int, path: str) -> str:
    """The path cowtrace opens for `path` as process `pid` names it."""
    return root_prefix(pid) + path if path.startswith("/") else path


def parse_ns_pid(status: str) -> int | None:
    """The innermost pid of a /proc/PID/status text's NSpid line; None when the process is in
    the pid namespace of that /proc (one entry), or the line is missing (kernel < 4.1)."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            pids = line.split()[1:]
            return int(pids[-1]) if len(pids) > 1 else None
    return None


def ns_pid(pid: int) -> int | None:
    """`pid`'s pid in its own pid namespace (a container's), None when that namespace is
    cowtrace's own or the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            return parse_ns_pid(handle.read())
    except OSError:
        return None
