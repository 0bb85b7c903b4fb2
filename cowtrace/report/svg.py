"""The flame graph as inline SVG, laid out here so the page shows it even with scripts off.

Each bar is a ``<g class="fg">`` holding a ``<title>`` (the hover text: frame, bytes, share), a
``<rect>`` and a ``<text>`` label cut to fit. Its ``data-*`` attributes (position and width as
fractions of the root, depth, frame name) are what the page's script reads to zoom: the SVG is
complete without it. The root is at the bottom, as in every flame graph: callers below callees.
"""

from __future__ import annotations

import zlib
from html import escape

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.render.format import count, human_bytes
from cowtrace.report.flame import NATIVE, PYTHON, Bar, FlameTree, layout

WIDTH = 1200  # viewBox units; the SVG scales to the page width
ROW = 18
PAD = 4
CHAR = 7.0  # width of one 12px monospace character, in viewBox units (to cut labels)
MIN_FRACTION = 0.5 / WIDTH  # bars under half a unit wide are not drawn


def color(name: str, kind: str) -> str:
    """Warm for native code, cool for Python, grey for the synthetic bars; the hue is a hash
    of the name, so one function keeps its colour everywhere and from run to run."""
    h = zlib.crc32(name.encode())
    if kind == NATIVE:
        return f"hsl({5 + h % 40},{70 + h % 20}%,{55 + (h >> 8) % 12}%)"
    if kind == PYTHON:
        return f"hsl({185 + h % 45},{55 + h % 20}%,{58 + (h >> 8) % 12}%)"
    return "hsl(0,0%,78%)"


def label(name: str, width: float) -> str:
    """The frame name cut to ``width`` units (``..`` marks the cut); empty when under 3 chars."""
    fits = int((width - 6) // CHAR)
    if fits < 3:
        return ""
    return name if len(name) <= fits else name[: fits - 2] + ".."


def hover(bar: Bar, total: int) -> str:
    pct = 100.0 * bar.width / total if total else 0.0
    return (
        f"{bar.name}\n{human_bytes(bar.width)} copied, {count(bar.width // PAGE_SIZE)} pages,"
        f" {pct:.2f}% of all copied bytes"
    )


def flame_svg(tree: FlameTree) -> tuple[str, int]:
    """The ``<svg>`` element, and how many bars were too thin to draw."""
    bars, dropped = layout(tree, MIN_FRACTION)
    total = tree.root.value
    depth = max(b.depth for b in bars)
    height = (depth + 1) * ROW + PAD
    parts = [
        f'<svg id="flame" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" data-total="{total}" data-row="{ROW}" data-char="{CHAR}" '
        f'role="img" aria-label="flame graph of copied bytes by writer stack">'
    ]
    for b in bars:
        fx, fw = b.x / total, b.width / total
        x, w = fx * WIDTH, fw * WIDTH
        y = height - PAD - (b.depth + 1) * ROW
        parts.append(
            f'<g class="fg fg-{b.kind}" data-i="{b.index}" data-p="{b.parent}" '
            f'data-d="{b.depth}" data-x="{fx:.9f}" data-w="{fw:.9f}" '
            f'data-n="{escape(b.name)}" data-b="{b.width}">'
            f"<title>{escape(hover(b, total))}</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.1):.2f}" height="{ROW - 1}" '
            f'rx="2" fill="{color(b.name, b.kind)}"/>'
            f'<text x="{x + 3:.2f}" y="{y + ROW - 5}">{escape(label(b.name, w))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts), dropped
