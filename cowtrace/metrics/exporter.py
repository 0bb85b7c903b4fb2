"""The metrics endpoint: turns Snapshots into an Exposition at each refresh and serves it.

Used by `trace`, `run` (one family) and `agent` (many).  The driver calls `update()` from its
own loop; the HTTP server thread only ever reads the last Exposition.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from cowtrace.errors import CowtraceError
from cowtrace.host import taskstats
from cowtrace.host.cgroup import PodIdentity, pod_identity
from cowtrace.metrics.address import ListenAddress, parse_listen_address
from cowtrace.metrics.collector import Exposition, Health, SnapshotCollector
from cowtrace.metrics.cost import BPF_STATS_ON, own_usage
from cowtrace.metrics.pytypes import DEFAULT_TOP as DEFAULT_TYPES_TOP
from cowtrace.metrics.pytypes import TypeCounters
from cowtrace.metrics.samplers import DelayBook, bpf_stats_enabled, program_run_stats, rollup_gauges
from cowtrace.metrics.series import MemberRow, SeriesBook
from cowtrace.model import Member, Snapshot
from cowtrace.results import OVER_BUDGET

DEFAULT_GRACE_S = 300.0


@dataclass
class MetricsOptions:
    """--metrics-addr and the options that shape the exposition (see cli.py)."""

    address: ListenAddress
    pid_label_grace_s: float = DEFAULT_GRACE_S
    pid_labels: bool = True
    delayacct: bool = False
    python_types_top: int = DEFAULT_TYPES_TOP  # named series of the copied-bytes-by-type counter
    # Where a family root runs in Kubernetes (its pod labels); a parameter for the tests.
    pod_identity: Callable[[int], PodIdentity] = field(default=pod_identity)


def metrics_options(
    addr: str | None,
    grace: float,
    no_pid_labels: bool,
    delayacct: bool,
    python_types_top: int = DEFAULT_TYPES_TOP,
) -> MetricsOptions | None:
    """The CLI's options, checked; None when --metrics-addr was not given."""
    if addr is None:
        if delayacct:
            raise CowtraceError("--delayacct needs --metrics-addr (it feeds the metrics)")
        return None
    if grace < 0:
        raise CowtraceError("--pid-label-grace must be 0 or more seconds")
    if python_types_top < 0:
        raise CowtraceError("--python-types-top must be 0 or more")
    return MetricsOptions(
        parse_listen_address(addr),
        grace,
        not no_pid_labels,
        delayacct,
        python_types_top=python_types_top,
    )


def _log(message: str) -> None:
    print(f"cowtrace: {message}", file=sys.stderr, flush=True)


def member_row(member: Member, snapshot: Snapshot) -> MemberRow:
    """The counters the kernel gave for one member (and attribution's, when present)."""
    counts = member.counts
    counters = {
        ("copies", ""): float(counts.copies),
        ("copied_bytes", ""): float(counts.copied_bytes),
        ("file_copies", ""): float(counts.file_copies),
        ("reuses", ""): float(counts.reuses),
        ("zero_fills", ""): float(counts.zero_fills),
        ("wp_retries", ""): float(counts.wp_retries),
    }
    view = snapshot.attribution
    if view is not None:
        for (pid, kind), copies in view.copies_by_kind.items():
            if pid == member.pid:
                counters[("mapping_copies", kind)] = float(copies)
        counters[("exit_copies", "")] = float(view.exit_copies.get(member.pid, 0))
    return MemberRow(
        root=snapshot.root_pid,
        pid=member.pid,
        role=str(member.role),
        comm=member.comm,
        exit_time=member.exit_time,
        counters=counters,
    )


class MetricsExporter:
    """Owns the HTTP endpoint, the series book and the samplers."""

    def __init__(self, options: MetricsOptions, log: Callable[[str], None] = _log) -> None:
        self.options = options
        self.log = log
        self.book = SeriesBook(grace_s=options.pid_label_grace_s, pid_labels=options.pid_labels)
        self.collector = SnapshotCollector()
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        ProcessCollector(namespace="cowtrace", registry=self.registry)
        self.delays: DelayBook | None = None
        self.port = 0
        self._server = None
        self._thread = None
        self._delayacct_before: bool | None = None
        # (time, events, BPF run seconds or None) at the previous update: the cost gauges are
        # figures over the last refresh interval.
        self._previous: tuple[float, int, float | None] | None = None
        # Pod labels per family root, read once when the root is first seen (host.cgroup).
        self.pods: dict[int, tuple[str, ...]] = {}
        self.types = TypeCounters(options.python_types_top)

    # ---- life ------------------------------------------------------------------------------
    def open(self) -> None:
        """Enable delay accounting (when asked), then listen.  Call before the workload
        starts: delay accounting counts only what happens while it is on."""
        if self.options.delayacct:
            self._delayacct_before = taskstats.enable_delayacct()
            if not self._delayacct_before:
                self.log("set kernel.task_delayacct=1 for --delayacct (restored at exit)")
            self.delays = DelayBook()
            self.delays.open()
        address = self.options.address
        try:
            self._server, self._thread = start_http_server(
                address.port, addr=address.host, registry=self.registry
            )
        except OSError as error:
            self.close()
            raise CowtraceError(
                f"cannot serve metrics on {address.host}:{address.port}: {error.strerror}"
            ) from error
        self.port = self._server.server_port
        self.log(f"serving metrics on {address.url(self.port)}")
        if not bpf_stats_enabled():
            self.log(f"BPF programs' run time is not counted: {BPF_STATS_ON} to count it")

    def close(self) -> None:
        """Stop serving; restore delay accounting as it was.  Safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.delays is not None:
            self.delays.close()
            self.delays = None
        if self._delayacct_before is not None:
            taskstats.restore_delayacct(self._delayacct_before)
            self._delayacct_before = None

    def __enter__(self) -> MetricsExporter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- each refresh ----------------------------------------------------------------------
    def update(
        self, snapshots: Iterable[Snapshot], health: Health, now: float | None = None
    ) -> None:
        """Fold the latest snapshots in and publish a new Exposition."""
        now = time.monotonic() if now is None else now
        snapshots = list(snapshots)
        rows: list[MemberRow] = []
        families: list[tuple[str, str, int]] = []
        for snapshot in snapshots:
            root_comm = ""
            for member in snapshot.members:
                row = member_row(member, snapshot)
                if not member.exited:
                    row.gauges = rollup_gauges(member.pid)
                if member.pid == snapshot.root_pid:
                    root_comm = member.comm
                rows.append(row)
            families.append((str(snapshot.root_pid), root_comm, len(snapshot.alive)))
        if self.delays is not None:
            self._add_delays(rows)
        shown_before = {(r.root, r.pid) for r in self.book.members()}
        self.book.update(rows, now)
        shown = {(r.root, r.pid) for r in self.book.members()}
        if self.delays is not None:
            self.delays.forget([pid for key in shown_before - shown for pid in key[1:]])
        live_roots = {s.root_pid for s in snapshots}
        for root in {r for r, _ in shown_before} - live_roots:
            self.book.forget_root(root)
        for root in live_roots - self.pods.keys():
            self.pods[root] = self.options.pod_identity(root).labels()
        kept = live_roots | {r for r, _ in shown}
        self.pods = {root: pod for root, pod in self.pods.items() if root in kept}
        # A view shared by several families' snapshots (the agent's) counts once.
        views = {id(s.attribution): s.attribution for s in snapshots if s.attribution is not None}
        self.types.update(stat for view in views.values() for stat in view.python_types)
        # One count per tracer, only ever added to: a counter as it is.
        python = [view.python_pages for view in views.values() if view.python_pages]
        over_budget = sum(pages.get(OVER_BUDGET, 0) for pages in python) if python else None
        bpf_stats = program_run_stats(health.program_fds) if bpf_stats_enabled() else None
        events_per_second, bpf_per_event = self._interval_cost(now, health, bpf_stats)
        self.collector.exposition = Exposition(
            label_names=self.book.label_names,
            counters=self.book.counters(),
            gauges=self.book.gauges(),
            families=tuple(families),
            pods={str(root): pod for root, pod in self.pods.items()},
            health=health,
            bpf_stats=bpf_stats,
            delayacct=self.delays is not None,
            attribution=any(s.attribution is not None for s in snapshots),
            peak_rss_bytes=own_usage().peak_rss_bytes,
            events_per_second=events_per_second,
            bpf_seconds_per_event=bpf_per_event,
            python_types=tuple(self.types.series()),
            python_pages_over_budget=over_budget,
        )

    def _interval_cost(
        self, now: float, health: Health, bpf_stats: dict[str, tuple[float, int]] | None
    ) -> tuple[float | None, float | None]:
        """Events per second and BPF run seconds per event since the previous update."""
        events = health.events + health.lost_events
        bpf_s = None if bpf_stats is None else sum(s for s, _ in bpf_stats.values())
        previous, self._previous = self._previous, (now, events, bpf_s)
        if previous is None or now <= previous[0]:
            return None, None
        new_events = events - previous[1]
        rate = max(0, new_events) / (now - previous[0])
        if bpf_s is None or previous[2] is None or new_events <= 0:
            return rate, None
        return rate, max(0.0, bpf_s - previous[2]) / new_events

    def _add_delays(self, rows: list[MemberRow]) -> None:
        assert self.delays is not None
        alive = [r.pid for r in rows if r.exit_time is None]
        exited = [r.pid for r in rows if r.exit_time is not None]
        figures = self.delays.sample(alive, exited)
        for row in rows:
            figure = figures.get(row.pid)
            if figure is not None:
                row.counters[("copy_delay_seconds", "")] = figure.seconds
                row.counters[("delayacct_copies", "")] = float(figure.count)


def tracer_health(stats: dict[str, int], events: int, program_fds: dict[str, int]) -> Health:
    """The tracer's own figures: lost records and table overflows as the core read them in
    this cycle's refresh (`TracingCore.read_health`: one reading for the snapshot, the summary
    and the metrics), the detail records drained, its programs' fds."""
    return Health(
        lost_events=stats["lost_events"],
        lost_proc_events=stats["lost_proc_events"],
        events=events,
        table_full={
            "members": stats["members_table_full"],
            "threads": stats["threads_table_full"],
        },
        program_fds=program_fds,
    )
