"""The `cowtrace` command's entry point, and `python -m cowtrace`.

Why a module of its own, importing almost nothing: the command line (typer, rich, numpy, bcc)
takes a few hundred milliseconds to import, and a Ctrl-C in that time must end cowtrace as
quietly as one a second later. Python's own SIGINT handler would raise KeyboardInterrupt in the
middle of some import and print a traceback; until the command line is imported, SIGINT keeps
its default action instead (the process ends at once, the shell shows 130). Nothing is loaded
into the kernel before `main` runs, so there is nothing to clean up. From `main` on, Ctrl-C is
a KeyboardInterrupt again, which the commands turn into a clean stop with a summary.
"""

import signal
import sys


def entry() -> int:
    """Import the command line with SIGINT at its default action, then run it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from cowtrace.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    return main()


if __name__ == "__main__":
    sys.exit(entry())
