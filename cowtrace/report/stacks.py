"""One list of weighted stacks for every profiler format (folded, speedscope, pprof).

The stacks are the leaves of the flame tree (flame.py), not a second walk over the file: each
tree node's *self* bytes (its value less its children's) become one stack, from the outermost
frame to that node. So the folded lines, the speedscope samples and the pprof samples say
exactly what the HTML flame graph draws, with the same ``[no stack]`` / ``[truncated stack]`` /
``[native callers unknown]`` frames and the same Python-over-native join, and their weights add
up to the file's copied bytes.

A frame name carries where it came from, as cowtrace writes it everywhere: a Python frame is
``qualname (file:line)``, a native one ``function (module)`` (``[unknown] (module)`` or
``module+0xOFFSET (module)`` when the object has no symbol there). :func:`frame_source` splits
these once for the formats that have fields for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.report.flame import NO_STACK, PYTHON, SYNTHETIC, FlameNode, Frame, build_tree
from cowtrace.report.frames import split_native, split_python
from cowtrace.report.model import ReportData


@dataclass(frozen=True)
class Stack:
    """Bytes copied under one exact path. ``frames`` is outermost first, as in the flame graph
    and the folded format; pprof wants the leaf first and reverses it."""

    frames: tuple[Frame, ...]
    copied_bytes: int

    @property
    def copies(self) -> int:
        """Copied pages: every copy is one base page (a huge page is split before it is
        copied), so bytes are whole pages."""
        return self.copied_bytes // PAGE_SIZE


def profile_stacks(data: ReportData) -> list[Stack]:
    """Every stack with its self bytes, depth first, heaviest subtree first (the flame graph's
    order, so output is stable run to run). A file without writer stacks gives one
    ``[no stack]`` stack holding all copied bytes; a file without copies gives none."""
    tree = build_tree(data)
    if tree is None:
        whole = data.totals.copied_bytes
        return [Stack(((NO_STACK, SYNTHETIC),), whole)] if whole > 0 else []
    stacks: list[Stack] = []
    walk: list[tuple[FlameNode, tuple[Frame, ...]]] = [
        (child, ((child.name, child.kind),)) for child in reversed(tree.root.ordered())
    ]
    while walk:
        node, path = walk.pop()
        own = node.value - sum(c.value for c in node.children.values())
        if own > 0:
            stacks.append(Stack(path, own))
        walk.extend((c, (*path, (c.name, c.kind))) for c in reversed(node.ordered()))
    return stacks


@dataclass(frozen=True)
class FrameSource:
    """What a frame name says about its code: ``file`` and ``line`` for Python frames (the
    line the frame names: today the code object's first line), ``module`` for native ones.
    ``function`` is the name alone, except for a native frame the module has no symbol for:
    ``[unknown] (module)`` stays whole, so viewers that rank by name keep the modules apart."""

    function: str
    file: str | None = None
    line: int | None = None
    module: str | None = None


def frame_source(frame: Frame) -> FrameSource:
    """Split ``qualname (file:line)`` / ``function (module)``; a name in neither form (a
    synthetic frame, a bare address) is all function."""
    name, kind = frame
    if kind == PYTHON:
        parts = split_python(name)
        return FrameSource(*parts) if parts else FrameSource(name)
    if kind != SYNTHETIC:
        function, module = split_native(name)
        if module is not None:
            return FrameSource(name if function.startswith("[") else function, module=module)
    return FrameSource(name)
