"""Counters the attribution engine keeps per small id and per process, bounded for the agent.

`IdTally`: counts per small non-negative id (a region, a stack id) and which pids contributed.
`RecentCopies`: a process' copies of the last window, for exit-time counting.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class RecentCopies:
    """A process' copies (ts, stack id) of the last window, kept for exit-time counting."""

    __slots__ = ("chunks", "exit_ts", "copies", "writers")

    def __init__(self) -> None:
        self.chunks: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self.exit_ts: int | None = None
        self.copies = 0
        self.writers: dict[int, int] = {}

    def count(self, ts: np.ndarray, stacks: np.ndarray, lo: int, hi: int) -> None:
        inside = (ts >= lo) & (ts <= hi)
        if not inside.any():
            return
        self.copies += int(inside.sum())
        ids, counts = np.unique(stacks[inside], return_counts=True)
        for sid, n in zip(ids.tolist(), counts.tolist(), strict=True):
            self.writers[sid] = self.writers.get(sid, 0) + n


class IdTally:
    """Counts per small non-negative id (region, stack id), and which pids contributed.

    Arrays indexed by id rather than dicts: a batch adds with one bincount.  Which ids a pid
    contributed to is kept sparse (its sorted distinct ids: stack ids reach 2 * STACK_ENTRIES,
    and a dense flag array per pid cost an agent 64 KiB for every worker it ever saw); a pid
    that `retire`s is folded into `retired`, a count per id, so that "processes" stays right
    while memory stays bounded by the pids still kept.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(64, np.int64)
        self.first_pid = np.full(64, -1, np.int64)
        self.retired = np.zeros(64, np.int64)  # per id: retired pids that contributed
        self.seen: dict[int, np.ndarray] = {}  # pid -> sorted distinct ids it contributed

    def _fit(self, size: int) -> None:
        if size > len(self.counts):
            grown = max(size, 2 * len(self.counts))
            extra = grown - len(self.counts)
            self.counts = np.concatenate([self.counts, np.zeros(extra, np.int64)])
            self.first_pid = np.concatenate([self.first_pid, np.full(extra, -1, np.int64)])
            self.retired = np.concatenate([self.retired, np.zeros(extra, np.int64)])

    def add(self, pid: int, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = ids.astype(np.int64)
        self._fit(int(ids.max()) + 1)
        distinct, counts = np.unique(ids, return_counts=True)
        self.counts[distinct] += counts
        fresh = ids[self.first_pid[ids] < 0]
        self.first_pid[fresh] = pid
        seen = self.seen.get(pid)
        self.seen[pid] = distinct if seen is None else np.union1d(seen, distinct)

    def retire(self, pid: int) -> np.ndarray:
        """Stop keeping which ids `pid` contributed to (counted in `retired`); its ids."""
        seen = self.seen.pop(pid, None)
        if seen is None:
            return np.zeros(0, np.int64)
        self.retired[seen] += 1
        return seen

    def clear(self, ids: np.ndarray) -> None:
        """Forget `ids` entirely (released stack ids: the kernel may hand them out again)."""
        inside = ids[ids < len(self.counts)]
        self.counts[inside] = 0
        self.first_pid[inside] = -1
        self.retired[inside] = 0

    def processes(self) -> np.ndarray:
        """Per id, how many pids contributed (kept ones and retired ones)."""
        total = self.retired.copy()
        if self.seen:
            flat = np.concatenate(list(self.seen.values()))
            total += np.bincount(flat, minlength=len(total))[: len(total)]
        return total


def any_flagged(seen: np.ndarray, ids: np.ndarray) -> bool:
    """Whether any of the sorted ids in `seen` is flagged in `ids` (a flag per id)."""
    inside = seen[seen < len(ids)]
    return bool(ids[inside].any())
