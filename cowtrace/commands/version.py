"""`cowtrace version`: print the version."""

from __future__ import annotations

from cowtrace import __version__


def command() -> None:
    """Print cowtrace's version."""
    print(__version__)
