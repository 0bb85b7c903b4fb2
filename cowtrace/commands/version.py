"""`cowtrace version` and `cowtrace --version`: the installed package's version."""

from __future__ import annotations


def command() -> None:
    """Print cowtrace's version."""
    from cowtrace import __version__

    print(__version__)
