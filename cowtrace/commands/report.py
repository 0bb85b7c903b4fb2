"""`cowtrace report FILE`: a summary or event log as a text report, an HTML page, or a file
for the profilers people already use (folded stacks, speedscope, pprof); `--diff BEFORE`
compares two runs.

Needs no root and no BPF: it only reads files that `trace` or `run` wrote, possibly on
another machine.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace.errors import CowtraceError, user_file

if TYPE_CHECKING:
    from rich.console import Console

    from cowtrace.report.model import ReportData

FORMATS = ("text", "html", "folded", "speedscope", "pprof")
DIFF_FORMATS = ("text", "folded")


def command(
    file: Annotated[
        str,
        typer.Argument(metavar="FILE", help="A --json summary or --events log ('-': stdin)."),
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            help="text (default), html, folded, speedscope or pprof.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="OUT", help="Write to OUT instead of stdout."),
    ] = None,
    diff: Annotated[
        str | None,
        typer.Option(
            "--diff",
            metavar="BEFORE",
            help="Compare FILE with BEFORE, an earlier run: what grew and what shrank "
            "(text, folded).",
        ),
    ] = None,
    html: Annotated[
        str | None,
        typer.Option("--html", metavar="OUT", help="Same as --format html -o OUT."),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top", min=1, metavar="N", help="Rows per ranked table (default 10; 50 in html)."
        ),
    ] = None,
    debug_dir: Annotated[
        str | None,
        typer.Option(
            "--debug-dir",
            metavar="DIR",
            help="Name module+0xOFFSET frames from DIR/.build-id/xx/rest.debug "
            "(default $COWTRACE_DEBUG_DIR or /usr/lib/debug: -dbgsym packages).",
        ),
    ] = None,
) -> None:
    """Render a summary (--json) or event log (--events) as a report or a profile.

    text (the default) goes to stdout: totals, processes, top mappings, allocation sites and
    writer stacks. html writes one page with no network resources: a flame graph of copied
    bytes by writer stack, the same breakdowns and the per-process table. folded (flamegraph.pl,
    inferno), speedscope and pprof (go tool pprof, Pyroscope) carry the writer stacks weighted
    by copied bytes. --diff BEFORE FILE compares two runs. An event log is aggregated here
    (streamed). Needs no root.

    Examples:

      cowtrace report summary.json

      cowtrace report events.jsonl --top 20

      cowtrace report summary.json --html report.html

      cowtrace report summary.json --format folded | flamegraph.pl > copies.svg

      cowtrace report summary.json --format pprof -o copies.pb.gz

      cowtrace report --diff before.json after.json

      sudo cowtrace run --quiet --json - -- ./server | cowtrace report -
    """
    raise typer.Exit(report(file, html, top, fmt=fmt, out=output, diff=diff, debug_dir=debug_dir))


WRITE_ERRORS = {
    FileNotFoundError: "cannot write {path}: no such directory",
    IsADirectoryError: "cannot write {path}: it is a directory",
}


def write_page(page: str | bytes, out: str) -> None:
    """Write the output to ``out`` ('-': stdout), as one file written whole."""
    if out == "-":
        if isinstance(page, bytes):
            sys.stdout.buffer.write(page)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(page)
            sys.stdout.flush()
        return
    with user_file(out, "write", WRITE_ERRORS):
        if isinstance(page, bytes):
            with open(out, "wb") as binary:
                binary.write(page)
        else:
            with open(out, "w", encoding="utf-8") as stream:
                stream.write(page)


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


def _file_text(render: Callable[[Console], None]) -> str:
    """What a renderer prints, as plain text for a file (no colours, PIPE_WIDTH wide)."""
    from rich.console import Console

    buffer = io.StringIO()
    render(Console(file=buffer, highlight=False, width=PIPE_WIDTH, color_system=None))
    return buffer.getvalue()


def _choose(fmt: str | None, html_out: str | None, out: str | None) -> tuple[str, str]:
    """(format, destination) from --format/-o and the older --html OUT."""
    if fmt is not None and fmt not in FORMATS:
        raise CowtraceError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if html_out is not None:
        if fmt not in (None, "html"):
            raise CowtraceError(f"--html writes HTML: it cannot be combined with --format {fmt}")
        if out is not None:
            raise CowtraceError("--html OUT already names the output: drop -o, or use -o alone")
        return "html", html_out
    return fmt or "text", out or "-"


def report(
    path: str,
    html_out: str | None,
    top: int | None,
    console: Console | None = None,
    *,
    fmt: str | None = None,
    out: str | None = None,
    diff: str | None = None,
    debug_dir: str | None = None,
) -> int:
    """Render ``path`` (compared against ``diff``, the earlier run, when given); return the
    exit status (errors raise CowtraceError)."""
    fmt, out = _choose(fmt, html_out, out)
    if diff is not None and fmt not in DIFF_FORMATS:
        raise CowtraceError(f"--diff writes {' or '.join(DIFF_FORMATS)}, not {fmt}")
    if fmt == "pprof" and out == "-" and sys.stdout.isatty():
        raise CowtraceError("pprof output is binary: give -o FILE, or redirect stdout")
    from cowtrace.report.load import load_report
    from cowtrace.report.resymbolize import resymbolize

    data = load_report(path)
    before = load_report(diff) if diff is not None else None
    for loaded in (data, before):
        if loaded is not None:
            resymbolize(loaded, debug_dir)
    if fmt == "text" and out == "-":
        _print_text(data, before, console or text_console(), top)
        return 0
    if fmt == "text":
        output: str | bytes = _file_text(lambda c: _print_text(data, before, c, top))
    else:
        output = _render(fmt, data, before, top)
    write_page(output, out)
    if out != "-":
        print(f"cowtrace: wrote {os.path.abspath(out)}", file=sys.stderr)
    return 0


def _print_text(
    data: ReportData, before: ReportData | None, console: Console, top: int | None
) -> None:
    from cowtrace.report.text import DEFAULT_TOP as TEXT_TOP
    from cowtrace.report.text import render_text

    if before is None:
        render_text(data, console, top or TEXT_TOP)
        return
    from cowtrace.report.diff import diff_runs
    from cowtrace.report.difftext import DEFAULT_TOP, render_diff

    render_diff(diff_runs(before, data), console, top or DEFAULT_TOP)


def _render(fmt: str, data: ReportData, before: ReportData | None, top: int | None) -> str | bytes:
    """Every format but text. Imported here: each command run needs one of them."""
    if fmt == "folded":
        from cowtrace.report.folded import render_folded, render_folded_diff

        return render_folded(data) if before is None else render_folded_diff(before, data)
    if fmt == "html":
        from cowtrace.report.html import DEFAULT_TOP, render_html

        return render_html(data, top or DEFAULT_TOP)
    if fmt == "speedscope":
        from cowtrace.report.speedscope import render_speedscope

        return render_speedscope(data)
    from cowtrace.report.pprof import render_pprof

    return render_pprof(data)
