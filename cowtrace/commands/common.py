"""What the tracing commands (trace, run, demo) share: options, stop signals, reporters, the
loop that drives a Session and the final outputs."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING

from rich.console import Console

from cowtrace.model import Snapshot
from cowtrace.output.summary import write_summary
from cowtrace.render.live import LiveView
from cowtrace.render.plain import PlainReporter
from cowtrace.render.summary import render_summary
from cowtrace.session import Session, run_loop

if TYPE_CHECKING:
    from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions


@dataclass
class OutputOptions:
    """The options every tracing command takes (see cli.py for their help)."""

    duration: float | None = None
    interval: float = 1.0
    json_path: str | None = None
    events_path: str | None = None
    quiet: bool = False
    plain: bool = False
    metrics: MetricsOptions | None = None  # --metrics-addr and friends


STOP_REASONS = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hung up",
}


@dataclass
class StopSignals:
    """Turns SIGINT, SIGTERM and SIGHUP into a stop reason the loop reads between steps.

    `on_signal` lets `run` forward a signal to its command instead of stopping at once.
    """

    on_signal: Callable[[int], str | None] | None = None
    reason: str | None = None
    received: list[int] = field(default_factory=list)
    _previous: dict[int, object] = field(default_factory=dict)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        reason = self.on_signal(signum) if self.on_signal is not None else STOP_REASONS[signum]
        if reason and not self.reason:
            self.reason = reason

    def __enter__(self) -> StopSignals:
        for signum in STOP_REASONS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def check(self) -> str | None:
        return self.reason


class Reporter:
    """Live view on a terminal, plain periodic lines otherwise, nothing with --quiet."""

    def __init__(self, options: OutputOptions, stream: IO[str]) -> None:
        self.options = options
        self.stream = stream
        self._live: LiveView | None = None
        self._plain: PlainReporter | None = None
        if options.quiet:
            return
        if options.plain or not stream.isatty():
            self._plain = PlainReporter(stream)
        else:
            self._live = LiveView(console=Console(file=stream))

    def __enter__(self) -> Reporter:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, snapshot: Snapshot) -> None:
        if self._live is not None:
            self._live.update(snapshot)
        elif self._plain is not None:
            self._plain.update(snapshot)

    def final(self, snapshot: Snapshot) -> None:
        if self.options.quiet:
            return
        render_summary(snapshot, Console(file=self.stream, soft_wrap=False))


def view_stream(options: OutputOptions, *, command_owns_stdout: bool) -> IO[str]:
    """stdout, unless the traced command or a "-" output already writes there."""
    stdout_taken = command_owns_stdout or "-" in (options.json_path, options.events_path)
    return sys.stderr if stdout_taken else sys.stdout


def trace_until_stopped(
    session: Session,
    options: OutputOptions,
    stops: StopSignals,
    reporter: Reporter,
    extra_stop: Callable[[], str | None] | None = None,
    exporter: MetricsExporter | None = None,
) -> Snapshot:
    """Drive the session until a signal, --duration, the root's exit or `extra_stop`."""

    def should_stop() -> str | None:
        return stops.check() or (extra_stop() if extra_stop else None)

    def on_snapshot(snapshot: Snapshot) -> None:
        reporter.update(snapshot)
        if exporter is not None:
            from cowtrace.metrics.exporter import tracer_health

            health = tracer_health(
                session.core.tracer_stats, session.core.events_drained, session.tracer.program_fds()
            )
            exporter.update([snapshot], health)

    with reporter:
        reason = run_loop(
            session,
            interval=options.interval,
            on_snapshot=on_snapshot,
            should_stop=should_stop,
            duration=options.duration,
        )
    final = session.finish(reason)
    reporter.final(final)
    if options.json_path:
        write_summary(final, options.json_path, session.core.tracer_stats)
    return final


def start_metrics(options: OutputOptions) -> MetricsExporter | None:
    """Serve metrics when --metrics-addr was given (before the workload starts: --delayacct
    counts only from then on)."""
    if options.metrics is None:
        return None
    from cowtrace.metrics.exporter import MetricsExporter

    exporter = MetricsExporter(options.metrics)
    exporter.open()
    return exporter
