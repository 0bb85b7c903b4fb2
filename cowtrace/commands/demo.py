"""`cowtrace demo`: trace the bundled pre-fork program (cowtrace/demo_app.py) for a while."""

from __future__ import annotations

import sys

from cowtrace.commands.common import OutputOptions
from cowtrace.commands.run import run
from cowtrace.session import SessionOptions


def demo(duration: float, plain: bool, session_options: SessionOptions | None = None) -> int:
    """Run the demo under `run` for `duration` seconds; the demo ends itself a little later."""
    command = [sys.executable, "-m", "cowtrace.demo_app", "--duration", f"{duration:g}"]
    options = OutputOptions(duration=duration + 5, plain=plain)
    return run(command, options, session_options or SessionOptions(malloc=True))
