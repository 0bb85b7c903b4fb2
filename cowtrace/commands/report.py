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

from rich.console import Console

from cowtrace.errors import CowtraceError
from cowtrace.report.load import load_report
from cowtrace.report.model import ReportData
from cowtrace.report.text import DEFAULT_TOP as TEXT_TOP
from cowtrace.report.text import render_text

FORMATS = ("text", "html", "folded", "speedscope", "pprof")
DIFF_FORMATS = ("text", "folded")


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
    try:
        if isinstance(page, bytes):
            with open(out, "wb") as binary:
                binary.write(page)
        else:
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


def _file_text(render: Callable[[Console], None]) -> str:
    """What a renderer prints, as plain text for a file (no colours, PIPE_WIDTH wide)."""
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
) -> int:
    """Render ``path`` (compared against ``diff``, the earlier run, when given); return the
    exit status (errors raise CowtraceError)."""
    fmt, out = _choose(fmt, html_out, out)
    if diff is not None and fmt not in DIFF_FORMATS:
        raise CowtraceError(f"--diff writes {' or '.join(DIFF_FORMATS)}, not {fmt}")
    if fmt == "pprof" and out == "-" and sys.stdout.isatty():
        raise CowtraceError("pprof output is binary: give -o FILE, or redirect stdout")
    data = load_report(path)
    before = load_report(diff) if diff is not None else None
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
