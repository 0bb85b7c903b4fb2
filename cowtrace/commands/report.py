"""`cowtrace report FILE`: a summary or event log as a text report, or with --html as a page.

Needs no root and no BPF: it only reads a file that `trace` or `run` wrote, possibly on
another machine.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

from cowtrace.errors import CowtraceError
from cowtrace.report.html import DEFAULT_TOP as HTML_TOP
from cowtrace.report.html import render_html
from cowtrace.report.load import load_report
from cowtrace.report.text import DEFAULT_TOP as TEXT_TOP
from cowtrace.report.text import render_text


def write_page(page: str, out: str) -> None:
    """Write the page to ``out`` ('-': stdout), as one file written whole."""
    if out == "-":
        sys.stdout.write(page)
        sys.stdout.flush()
        return
    try:
        with open(out, "w", encoding="utf-8") as stream:
            stream.write(page)
    except FileNotFoundError:
        raise CowtraceError(f"cannot write {out}: no such directory") from None
    except IsADirectoryError:
        raise CowtraceError(f"cannot write {out}: it is a directory") from None
    except OSError as error:
        raise CowtraceError(f"cannot write {out}: {error.strerror or error}") from None


PIPE_WIDTH = 160
"""Columns when stdout is not a terminal (a file, a pager, a ticket): rich would assume 80 and
fold frame names; COLUMNS still wins when set."""


def text_console() -> Console:
    """stdout, as wide as the terminal, or PIPE_WIDTH when it is not one."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def report(path: str, html_out: str | None, top: int | None, console: Console | None = None) -> int:
    """Render ``path``; return the exit status (errors raise CowtraceError)."""
    data = load_report(path)
    if html_out is not None:
        write_page(render_html(data, top or HTML_TOP), html_out)
        if html_out != "-":
            print(f"cowtrace: wrote {os.path.abspath(html_out)}", file=sys.stderr)
        return 0
    render_text(data, console or text_console(), top or TEXT_TOP)
    return 0
