"""Folded stacks: ``outer;inner;leaf BYTES`` per line, for flamegraph.pl, inferno and speedscope.

The weight is copied bytes (a copy is one 4 KiB page), so a flame graph drawn from it has the
same widths as the report's own. Frames are as cowtrace names them; a ``;`` inside a name (it
would split the frame) becomes ``:``, and line breaks become spaces.

:func:`render_folded_diff` writes the differential form ``stack BEFORE AFTER`` that
flamegraph.pl draws as a differential flame graph (the output of its difffolded.pl, and of
``inferno-diff-folded``): one line per stack found in either run.
"""

from __future__ import annotations

from cowtrace.report.model import ReportData
from cowtrace.report.stacks import Stack, profile_stacks


def folded_key(stack: Stack) -> str:
    """The stack's frames as one folded field, outermost first."""
    return ";".join(
        name.replace(";", ":").replace("\n", " ").replace("\r", " ") for name, _ in stack.frames
    )


def render_folded(data: ReportData) -> str:
    """One line per stack, in the flame graph's order (heaviest subtree first)."""
    return "".join(f"{folded_key(s)} {s.copied_bytes}\n" for s in profile_stacks(data))


def render_folded_diff(before: ReportData, after: ReportData) -> str:
    """``stack BEFORE AFTER`` for the union of both runs' stacks: the after run's order first,
    then stacks only the before run had, in its order."""
    weights: dict[str, list[int]] = {}
    for column, data in ((1, after), (0, before)):
        for stack in profile_stacks(data):
            weights.setdefault(folded_key(stack), [0, 0])[column] += stack.copied_bytes
    return "".join(f"{key} {b} {a}\n" for key, (b, a) in weights.items())
