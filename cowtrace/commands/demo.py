"""`cowtrace demo`: trace the bundled pre-fork program (cowtrace/demo_app.py) for a while."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace.commands.options import ExitWindow, Malloc, NoStacks, Plain

if TYPE_CHECKING:
    from cowtrace.session import SessionOptions


def command(
    duration: Annotated[
        float, typer.Option("--duration", min=1.0, help="How long to trace.")
    ] = 20.0,
    plain: Plain = False,
    malloc: Malloc = None,
    exit_window: ExitWindow = 0.5,
    no_stacks: NoStacks = False,
) -> None:
    """Trace the bundled pre-fork demo: a master and workers writing to inherited memory.

    Examples:

      sudo cowtrace demo

      sudo cowtrace demo --duration 10 --plain

      sudo cowtrace demo --no-malloc --no-stacks
    """
    from cowtrace.session import SessionOptions

    session_options = SessionOptions(
        malloc=malloc is None or malloc, stacks=not no_stacks, exit_window_s=exit_window
    )
    raise typer.Exit(demo(duration, plain, session_options))


def demo(duration: float, plain: bool, session_options: SessionOptions | None = None) -> int:
    """Run the demo under `run` for `duration` seconds; the demo ends itself a little later."""
    from cowtrace.commands.common import OutputOptions
    from cowtrace.commands.run import run
    from cowtrace.session import SessionOptions

    command = [sys.executable, "-m", "cowtrace.demo_app", "--duration", f"{duration:g}"]
    options = OutputOptions(duration=duration + 5, plain=plain)
    return run(command, options, session_options or SessionOptions(malloc=True))
