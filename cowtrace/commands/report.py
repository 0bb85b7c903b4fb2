"""`cowtrace report FILE`: a summary or event log as a text report, or with --html as a page.

Needs no root and no BPF: it only reads a file that `trace` or `run` wrote, possibly on
another machine.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace.errors import CowtraceError

if TYPE_CHECKING:
    from rich.console import Console


def command(
    file: Annotated[
        str,
        typer.Argument(metavar="FILE", help="A --json summary or --events log ('-': stdin)."),
    ],
    html: Annotated[
        str | None,
        typer.Option(
            "--html", metavar="OUT", help="Write one self-contained HTML page ('-': stdout)."
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top", min=1, metavar="N", help="Rows per ranked table (default 10; 50 in --html)."
        ),
    ] = None,
) -> None:
    """Render a summary (--json) or event log (--events) as a text report or an HTML page.

    The text report goes to stdout: totals, processes, top mappings, allocation sites and
    writer stacks. --html OUT writes one page with no network resources: a flame graph of
    copied bytes by writer stack, the same breakdowns and the per-process table. An event
    log is aggregated here (streamed). Needs no root.

    Examples:

      cowtrace report summary.json

      cowtrace report events.jsonl --top 20

      cowtrace report summary.json --html report.html

      sudo cowtrace run --quiet --json - -- ./server | cowtrace report -
    """
    raise typer.Exit(report(file, html, top))


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
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def report(path: str, html_out: str | None, top: int | None, console: Console | None = None) -> int:
    """Render ``path``; return the exit status (errors raise CowtraceError)."""
    # Imported here, not at the top: `--help` and shell completion import this module.
    from cowtrace.report.html import DEFAULT_TOP as HTML_TOP
    from cowtrace.report.html import render_html
    from cowtrace.report.load import load_report
    from cowtrace.report.text import DEFAULT_TOP as TEXT_TOP
    from cowtrace.report.text import render_text

    data = load_report(path)
    if html_out is not None:
        write_page(render_html(data, top or HTML_TOP), html_out)
        if html_out != "-":
            print(f"cowtrace: wrote {os.path.abspath(html_out)}", file=sys.stderr)
        return 0
    render_text(data, console or text_console(), top or TEXT_TOP)
    return 0
