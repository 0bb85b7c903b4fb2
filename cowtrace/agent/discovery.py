"""Which processes become roots of new families: the agent's /proc scan.

A root is a process the user named (`--pid`) or whose comm matches `--comm`, that no traced
family holds yet.  A matching process whose parent matches too is left to its parent (a
pre-fork server's workers usually share the master's name): the parent becomes the root and
adopts it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cowtrace.errors import CowtraceError
from cowtrace.host.procfs import ProcStat


@dataclass
class RootMatcher:
    comm: re.Pattern[str] | None = None
    pids: set[int] = field(default_factory=set)

    @classmethod
    def from_options(cls, comm: str | None, pids: Iterable[int]) -> RootMatcher:
        pattern = None
        if comm is not None:
            try:
                pattern = re.compile(comm)
            except re.error as error:
                raise CowtraceError(
                    f"invalid --comm regular expression {comm!r}: {error}"
                ) from error
        pid_set = set(pids)
        if pattern is None and not pid_set:
            raise CowtraceError("nothing to trace", hint="cowtrace agent --comm REGEX or --pid PID")
        if any(pid <= 0 for pid in pid_set):
            raise CowtraceError("invalid --pid: pids are positive")
        return cls(pattern, pid_set)

    def matches(self, stat: ProcStat) -> bool:
        if stat.pid in self.pids:
            return True
        return self.comm is not None and self.comm.search(stat.comm) is not None


def traceable(stat: ProcStat, own_pid: int) -> bool:
    """A live user-space process that is not cowtrace itself."""
    return not stat.is_kernel_thread and stat.state not in ("Z", "X") and stat.pid != own_pid


def new_roots(
    processes: list[ProcStat],
    matcher: RootMatcher,
    is_traced: Callable[[int], bool],
    own_pid: int,
) -> list[ProcStat]:
    """Candidate roots, oldest first (so a master comes before the workers it will adopt).

    The caller attaches them in order and asks `is_traced` again for each: a candidate that an
    earlier one adopted is then skipped."""
    by_pid = {stat.pid: stat for stat in processes}
    found = []
    for stat in processes:
        if not matcher.matches(stat) or not traceable(stat, own_pid) or is_traced(stat.pid):
            continue
        parent = by_pid.get(stat.ppid)
        named = stat.pid in matcher.pids
        if not named and parent is not None and matcher.matches(parent) and parent.pid != own_pid:
            continue  # its parent is (or becomes) the root
        found.append(stat)
    return sorted(found, key=lambda s: (s.start_ticks, s.pid))
