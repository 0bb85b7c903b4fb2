"""The flame graph's tree: copied bytes by writer stack, outermost frame at the root.

How native and Python stacks combine (one tree, so every copied byte appears once):

- A native writer stack is a path from its outermost frame up to the leaf, the function whose
  store made the kernel copy the page. A stack the unwinder could not finish (no frame
  pointers, so often just the leaf) stands on a ``[truncated stack]`` node: its real callers
  are unknown, and grouping such stacks keeps them from posing as entry points.
- A Python stack is drawn *above the native leaf it wrote through*, outermost Python frame
  first: the bar under a Python frame is the native function that did the store, the bars
  above it are the Python code that was running, down to the innermost line. Read upwards as
  "``visit_decref`` wrote, while ``gc.collect`` ran under ``handle (app.py:42)``".
- From an event log the pairing is exact: each copy line carries both stacks.
- A summary lists native and Python writers separately, joined only by ``native_leaf``, the
  function the native stack's leaf frame names (``PyType_Ready`` is ``PyType_Ready
  (python3.11)``; ``python3.11+0x1ad23f``, code without a symbol, is ``[unknown]
  (python3.11)``: frames.leaf_key). When one native stack ends in that leaf, the Python stacks
  go above it exactly. When several do, the Python bytes are split across them in proportion
  to their bytes (largest remainder, in whole pages) and :attr:`FlameTree.approximate` names
  the leaf, so the page can say so. Python bytes beyond what the native stacks ending in the
  leaf hold, or with no native stack at all, stand on ``[native callers unknown]`` → leaf, but
  only as many as the copies no native stack holds: beyond those they are copies a native
  stack already counts (whose leaf the two walks named differently), so drawing them again
  would count them twice; they are left out and :attr:`FlameTree.unplaced` says how much.
- Copies with no stack at all are one ``[no stack]`` bar, so shares are of all copied bytes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.report.frames import leaf_key
from cowtrace.report.model import ReportData
from cowtrace.results import PythonWriterStat, WriterStat

NATIVE, PYTHON, SYNTHETIC = "native", "python", "synthetic"
TRUNCATED = "[truncated stack]"
NO_STACK = "[no stack]"
NO_NATIVE = "[native callers unknown]"
ROOT = "all copies"

Frame = tuple[str, str]  # (name, kind)


@dataclass
class FlameNode:
    """One bar: a frame reached by one path from the root, with the bytes copied under it."""

    name: str
    kind: str
    value: int = 0
    children: dict[Frame, FlameNode] = field(default_factory=dict)

    def child(self, name: str, kind: str) -> FlameNode:
        node = self.children.get((name, kind))
        if node is None:
            node = self.children[(name, kind)] = FlameNode(name, kind)
        return node

    def ordered(self) -> list[FlameNode]:
        """Children heaviest first (ties by name), so the picture is stable run to run."""
        return sorted(self.children.values(), key=lambda n: (-n.value, n.name, n.kind))

    def depth(self) -> int:
        """Levels above this one (0 for a leaf bar)."""
        return 1 + max((c.depth() for c in self.children.values()), default=-1)


@dataclass
class FlameTree:
    root: FlameNode
    approximate: list[str] = field(default_factory=list)  # native leaves split in proportion
    unplaced: int = 0  # Python bytes left out: no native stack to stand on (see above)

    def add(self, path: list[Frame], value: int) -> None:
        if value <= 0:
            return
        node = self.root
        node.value += value
        for name, kind in path:
            node = node.child(name, kind)
            node.value += value


def native_path(frames: list[str] | tuple[str, ...], truncated: bool) -> list[Frame]:
    """Outermost first; a truncated walk stands on the ``[truncated stack]`` node."""
    path: list[Frame] = [(TRUNCATED, SYNTHETIC)] if truncated else []
    return path + [(f, NATIVE) for f in reversed(frames)]


def python_path(frames: list[str] | tuple[str, ...]) -> list[Frame]:
    return [(f, PYTHON) for f in reversed(frames)]


def split(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` in whole units (largest remainder; ties to
    the earlier weight). Sums to ``total`` exactly when any weight is positive."""
    whole = sum(weights)
    if whole <= 0 or total <= 0:
        return [0] * len(weights)
    shares = [total * w // whole for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


def build_tree(data: ReportData) -> FlameTree | None:
    """The flame tree for a report, or None when the file has no writer stacks at all."""
    if data.samples is not None:
        tree = _from_samples(data)
    elif data.writers or data.python_writers:
        tree = _from_summary(
            data.writers or [], data.python_writers or [], data.totals.copied_bytes
        )
    else:
        return None
    if tree.root.value == 0:
        return None
    missing = data.totals.copied_bytes - tree.root.value
    tree.add([(NO_STACK, SYNTHETIC)], missing)
    return tree


def _from_samples(data: ReportData) -> FlameTree:
    tree = FlameTree(FlameNode(ROOT, SYNTHETIC))
    for s in data.samples or []:
        if s.native:
            path = native_path(s.native, s.truncated)
        elif s.python:
            path = [(NO_NATIVE, SYNTHETIC)]
        else:
            path = [(NO_STACK, SYNTHETIC)]
        if s.python:
            path += python_path(s.python)
        tree.add(path, s.copied_bytes)
    return tree


def _from_summary(
    writers: list[WriterStat], python_writers: list[PythonWriterStat], total_bytes: int
) -> FlameTree:
    tree = FlameTree(FlameNode(ROOT, SYNTHETIC))
    by_leaf: dict[tuple[str, str] | None, list[PythonWriterStat]] = defaultdict(list)
    for pw in python_writers:
        by_leaf[leaf_key(pw.native_leaf) if pw.native_leaf else None].append(pw)
    native_by_leaf: dict[tuple[str, str], list[WriterStat]] = defaultdict(list)
    for w in writers:
        if w.frames:
            native_by_leaf[leaf_key(w.frames[0])].append(w)
    # Copies outside every native stack: the only ones Python bytes that no native stack can
    # take may stand for (the others are copies some native stack already counts).
    room = max(0, total_bytes - sum(w.copied_bytes for w in writers)) // PAGE_SIZE
    # Pages of each native stack that Python stacks will sit on, and what goes above each.
    above: dict[int, list[tuple[PythonWriterStat, int]]] = defaultdict(list)
    for key, pws in by_leaf.items():
        targets = native_by_leaf.get(key, []) if key else []
        py_pages = [pw.copied_bytes // PAGE_SIZE for pw in pws]
        capacity = sum(w.copied_bytes // PAGE_SIZE for w in targets)
        placed = min(sum(py_pages), capacity)
        if len(targets) > 1 and placed:
            tree.approximate.append(targets[0].frames[0])
        per_target = split(placed, [w.copied_bytes // PAGE_SIZE for w in targets])
        left = list(py_pages)
        for target, pages in zip(targets, per_target, strict=True):
            taken = split(pages, left)
            above[id(target)] = [(pws[i], n) for i, n in enumerate(taken) if n]
            left = [have - got for have, got in zip(left, taken, strict=True)]
        for pw, pages in zip(pws, left, strict=True):
            kept = min(pages, room)
            room -= kept
            tree.unplaced += (pages - kept) * PAGE_SIZE
            leaf = pw.native_leaf
            base = [(NO_NATIVE, SYNTHETIC)] + ([(leaf, NATIVE)] if leaf else [])
            tree.add(base + python_path(pw.frames), kept * PAGE_SIZE)
    for w in writers:
        path = native_path(w.frames, w.truncated) if w.frames else [(NO_STACK, SYNTHETIC)]
        rest = w.copied_bytes
        for pw, pages in above.get(id(w), []):
            tree.add(path + python_path(pw.frames), pages * PAGE_SIZE)
            rest -= pages * PAGE_SIZE
        tree.add(path, rest)
    return tree


@dataclass(frozen=True)
class Bar:
    """One laid-out bar: ``x`` and ``width`` in bytes from the root's left edge."""

    index: int
    parent: int  # -1 for the root
    depth: int
    x: int
    width: int
    name: str
    kind: str


def layout(tree: FlameTree, min_fraction: float = 0.0) -> tuple[list[Bar], int]:
    """Bars in depth-first order (a bar's subtree follows it), and how many were too thin to
    draw (narrower than ``min_fraction`` of the root: they would be under a pixel wide)."""
    bars: list[Bar] = []
    dropped = 0
    total = tree.root.value
    stack: list[tuple[FlameNode, int, int, int]] = [(tree.root, -1, 0, 0)]
    while stack:
        node, parent, depth, x = stack.pop()
        if total and node.value / total < min_fraction:
            dropped += 1
            continue
        index = len(bars)
        bars.append(Bar(index, parent, depth, x, node.value, node.name, node.kind))
        offsets = []
        cx = x
        for child in node.ordered():
            offsets.append((child, index, depth + 1, cx))
            cx += child.value
        stack.extend(reversed(offsets))
    return bars, dropped
