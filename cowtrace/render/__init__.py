"""Renderers: turn a :class:`cowtrace.model.Snapshot` into something a person reads.

- :class:`LiveView`: the rich live view for a terminal.
- :class:`PlainReporter`: periodic greppable lines when there is no terminal.
- :func:`render_summary` / :func:`summary_lines`: the final summary, rich or plain.

They only read snapshots, so they can be tested with synthetic ones and never touch BPF.
"""

from cowtrace.render.live import LiveView
from cowtrace.render.plain import PlainReporter
from cowtrace.render.summary import render_summary, summary_lines

__all__ = ["LiveView", "PlainReporter", "render_summary", "summary_lines"]
