"""A traced process' own view of files and pids, for targets in containers.

The kernel names a mapped file in /proc/PID/maps (and /proc/PID/exe) by its path from the
reader's root when the reader can reach it, else from the root of the mount namespace it is
mounted in.  So for a process in cowtrace's own mount namespace (every non-container target, a
chroot'ed daemon included) the path is the host's: opened as it is, and still good once the
process is gone.  A process in another mount namespace (a container, `unshare --mount`) has
its files named from its namespace's root (its script, its libraries, a file it mapped), which
on the host may not exist or may be another file altogether.  The kernel offers its view
through the magic link /proc/PID/root: a path opened under it is resolved from the process'
root, through its mounts.  So cowtrace opens such a member's files as `root_prefix(pid) +
path` and keeps showing `path` (the container's name).  This is right when the process' root
is its namespace's root, as container runtimes make it (`pivot_root`); a `chroot` inside a new
mount namespace names files from outside its root, which this does not resolve.

Its pid inside the container comes from the NSpid line of /proc/PID/status (its pid in each
pid namespace from the one of this /proc down to its own): shown beside the host pid.
"""

from __future__ import annotations

import os


def root_prefix(pid: int) -> str:
    """The empty string when `pid` is in cowtrace's mount namespace, else "/proc/PID/root", to
    put before each path the process names.  "" for a process that is gone (nothing better is
    left: its paths are tried as they are)."""
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
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
