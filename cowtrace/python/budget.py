"""The time budget of the Python-types resolution (copied_types.py): which copied pages of a
drained batch are examined for the objects on them, so that the rest of the drain cycle
(exits, forgetting members, the kernel's counters) is never starved of CPU.

Why a budget: resolving a page to Python types costs ~20-50 µs (reads of /proc/PID/mem, pool
parsing), every copied page of a CPython member is resolved, and under worker churn that is
most of the tracer's CPU.  When the machine is busy the tracer gets less CPU than the churn
needs, and types resolution took it all: exited workers then waited longer in the kernel's
`members` table and the drained batches grew, and with them the tracer's memory
(bench/README.md, "Agent soak").  The copy counts are the kernel's and stay exact; only the
apportioning of copied pages to Python types, an attribution detail, is reduced.

The budget is a share of wall time (not CPU time): a tracer starved of CPU takes longer in
wall time for the same pages, so it examines fewer of them, and the share left to the rest
of the cycle holds whatever the load.  It is kept as a credit of seconds (a token bucket):
it grows by `share` seconds per second of wall time, up to `burst_s` (so a short run's one
big batch, or a start-up's, is examined whole), and each batch's resolution time is taken
from it, even past zero (a batch that ran longer than planned is paid back by the next).

When a batch would cost more than the credit, a systematic sample of it is examined: `k` of
its `n` pages, at positions ⌊i·n/k⌋ in the order the caller gives.  The tracker (tracker.py)
orders the batch by member and address, so each member gets its share of the examined pages,
spread over its address space, whatever order the ring delivered them in (its per-CPU
batches interleave the writers in a near-regular pattern that a stride over the ring's order
could alias with: every third page one member's).  The types' shares within a batch are so
kept in expectation.  (A stride that is a multiple of a pymalloc pool's 4 pages, over densely
copied memory, picks the same page of every pool; all pages of a pool hold blocks of one size
class, so only the first page's 48-byte pool header sets it apart.)  Skipping whole batches
instead would drop whole stretches of time (a start-up's burst, a worker's exit); a random
sample would serve as well but could not be derived by hand in a test
(tests/unit/test_python_types_budget.py).  The figures are what was examined, never scaled
up; what was not is counted (copied_types.CopiedTypes.over_budget, the summary's
`python_pages["over_budget"]`): never dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where used: commands/options.py imports this module
    import numpy as np

DEFAULT_SHARE = 0.25  # of wall time (a quarter of one core at most, averaged)
BURST_S = 2.0  # credit at most: a batch of 40-90k pages at once at the usual speeds
PRIOR_S_PER_PAGE = 50e-6  # the cost of a page before any was measured (bench/README.md)
DECAY = 0.5  # weight of the past in the cost per page, per batch measured


def parse_share(text: str) -> float | None:
    """`--python-types-budget`: a share of wall time in (0, 1], or "none" for no limit (0
    is refused rather than read as either: no time at all, or no limit)."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    try:
        share = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a share (0.25) nor 'none'") from None
    if not 0 < share <= 1:
        raise ValueError(f"{text} is not in (0, 1] ('none': no limit)")
    return share


class TypesBudget:
    """How many of a batch's copied pages may be examined now, and which."""

    def __init__(
        self,
        share: float | None = DEFAULT_SHARE,
        *,
        burst_s: float = BURST_S,
        s_per_page: float = PRIOR_S_PER_PAGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share = share  # None: no limit
        self.burst_s = burst_s
        self.clock = clock
        self.credit = burst_s
        self._last = clock()
        # The cost per page, as decayed sums of seconds and pages measured: a small batch
        # (whose fixed costs weigh more per page) moves it little.
        self._seconds = s_per_page
        self._pages = 1.0

    @property
    def s_per_page(self) -> float:
        return self._seconds / self._pages

    def plan(self, n: int) -> np.ndarray:
        """The positions (ascending) of the pages of an `n`-page batch to examine."""
        now = self.clock()
        if self.share is not None:
            self.credit = min(self.burst_s, self.credit + self.share * (now - self._last))
        self._last = now
        affordable = n if self.share is None else int(max(0.0, self.credit) // self.s_per_page)
        return systematic_sample(n, min(n, affordable))

    def spend(self, seconds: float, pages: int) -> None:
        """The batch's resolution took `seconds` for `pages` pages examined."""
        if self.share is None:
            return
        self.credit -= seconds
        if pages:
            self._seconds = DECAY * self._seconds + seconds
            self._pages = DECAY * self._pages + pages


def systematic_sample(n: int, k: int) -> np.ndarray:
    """`k` of `n` positions, ascending and evenly spread: ⌊i·n/k⌋ for i < k."""
    import numpy as np

    return np.arange(k, dtype=np.int64) * n // k if k else np.zeros(0, np.int64)
