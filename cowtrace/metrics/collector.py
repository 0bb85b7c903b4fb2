"""The Prometheus families cowtrace exposes: names, units, HELP text, and the collector.

The collector reads the last Exposition the exporter prepared (an immutable object swapped
in whole), so a scrape never sees half an update and never waits for the tracer.
Names follow Prometheus conventions: base units (bytes, seconds), `_total` on counters.

What tracing costs: cowtrace's CPU (`cowtrace_process_cpu_seconds_total`) and resident memory
(`cowtrace_process_resident_memory_bytes`) come from prometheus_client's process collector;
this one adds the peak, the events per second and the BPF programs' run time per event over
the last refresh (the counters `cowtrace_events_total` and `cowtrace_bpf_run_time_seconds_total`
give any other window in PromQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cowtrace import __version__
from cowtrace.host.cgroup import POD_LABELS
from cowtrace.metrics.cost import BPF_STATS_ON
from cowtrace.metrics.series import GROUP_LABELS, MEMBER_LABELS, Series, ValueKey

NO_POD_LABELS: tuple[str, ...] = ("",) * len(POD_LABELS)


@dataclass(frozen=True)
class MetricDef:
    name: str  # without `_total` for counters: prometheus_client appends it
    help: str
    extra_label: str | None = None


MEMBER_COUNTERS: dict[str, MetricDef] = {
    "copies": MetricDef(
        "cowtrace_copies",
        "Pages the kernel copied on a write to a shared page (copy-on-write breaks), by the "
        "writing member; exact. Includes copies from MAP_PRIVATE file pages.",
    ),
    "copied_bytes": MetricDef(
        "cowtrace_copied_bytes", "Bytes of memory copied by copy-on-write breaks (copies x 4 KiB)."
    ),
    "file_copies": MetricDef(
        "cowtrace_file_copies",
        "Copies whose source was a page-cache page of a MAP_PRIVATE file (subset of copies).",
    ),
    "reuses": MetricDef(
        "cowtrace_reuses",
        "Write faults on write-protected pages that the kernel resolved without copying "
        "(no other process mapped the page any more).",
    ),
    "zero_fills": MetricDef(
        "cowtrace_zero_fills", "Writes to a page mapped to the shared zero page (a fresh page)."
    ),
    "wp_retries": MetricDef(
        "cowtrace_wp_retries",
        "Copies the kernel gave up to retry the fault under the mmap lock: nothing was copied, "
        "but delay accounting's copy count (cowtrace_delayacct_copies_total) includes them.",
    ),
    "mapping_copies": MetricDef(
        "cowtrace_mapping_copies",
        "Copies by the kind of mapping the copied page belonged to (attribution).",
        "mapping",
    ),
    "exit_copies": MetricDef(
        "cowtrace_exit_copies",
        "Copies a member made in its last moments before exit (teardown, free(), "
        "destructors): memory copied only to be released (attribution).",
    ),
    "copy_delay_seconds": MetricDef(
        "cowtrace_copy_delay_seconds",
        "Time the member spent in the kernel copying pages, from delay accounting "
        "(taskstats wpcopy_delay_total; --delayacct).",
    ),
    "delayacct_copies": MetricDef(
        "cowtrace_delayacct_copies",
        "Passes through the kernel's copy routine (copies + zero-fills), from delay "
        "accounting (taskstats wpcopy_count; --delayacct): the kernel's own count.",
    ),
}

MEMBER_GAUGES: dict[str, MetricDef] = {
    "rss_bytes": MetricDef(
        "cowtrace_rss_bytes", "Resident memory of the member (smaps_rollup Rss)."
    ),
    "pss_bytes": MetricDef(
        "cowtrace_pss_bytes",
        "Proportional set size of the member (smaps_rollup Pss): shared pages divided among "
        "the processes mapping them.",
    ),
    "private_memory_bytes": MetricDef(
        "cowtrace_private_memory_bytes",
        "Memory mapped by this member alone (smaps_rollup Private_Clean / Private_Dirty).",
        "state",
    ),
    "shared_memory_bytes": MetricDef(
        "cowtrace_shared_memory_bytes",
        "Memory the member still shares with other processes (smaps_rollup Shared_Clean / "
        "Shared_Dirty).",
        "state",
    ),
}


@dataclass(frozen=True)
class Health:
    """The tracer's own state, read at each refresh."""

    lost_events: int = 0
    lost_proc_events: int = 0
    events: int = 0  # detail records drained from the kernel's ring
    table_full: dict[str, int] = field(default_factory=dict)
    program_fds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Exposition:
    """Everything one scrape shows."""

    label_names: tuple[str, ...] = MEMBER_LABELS
    counters: dict[ValueKey, list[Series]] = field(default_factory=dict)
    gauges: dict[ValueKey, list[Series]] = field(default_factory=dict)
    families: tuple[tuple[str, str, int], ...] = ()  # (root, comm, alive members)
    # Root -> values of POD_LABELS (host.cgroup), read once per family root: every series of
    # a family carries its pod, so Kubernetes adds no series.  A root not here: empty strings.
    pods: dict[str, tuple[str, ...]] = field(default_factory=dict)
    health: Health = field(default_factory=Health)
    bpf_stats: dict[str, tuple[float, int]] | None = None  # None: kernel.bpf_stats_enabled=0
    delayacct: bool = False
    attribution: bool = False
    peak_rss_bytes: int | None = None  # cowtrace's own VmHWM
    events_per_second: float | None = None  # over the last refresh; None on the first
    bpf_seconds_per_event: float | None = None  # same span; None: no events or stats off
    python_types: tuple[tuple[str, float], ...] = ()  # (type, copied bytes): metrics/pytypes.py
    # Copied pages of CPython members not examined for types (python/budget.py); None: no
    # CPython member, no series.
    python_pages_over_budget: int | None = None


def _member_families(
    defs: dict[str, MetricDef],
    values: dict[ValueKey, list[Series]],
    label_names: tuple[str, ...],
    pods: dict[str, tuple[str, ...]],
    *,
    counter: bool,
) -> Iterator[Metric]:
    kind = CounterMetricFamily if counter else GaugeMetricFamily
    for key, definition in defs.items():
        extra_names = [definition.extra_label] if definition.extra_label else []
        names = [*label_names, *POD_LABELS, *extra_names]
        family = kind(definition.name, definition.help, labels=names)
        for (value_key, extra), series in values.items():
            if value_key != key:
                continue
            for one in series:
                pod = pods.get(one.labels[0], NO_POD_LABELS)  # labels[0] is the root
                family.add_metric(
                    [*one.labels, *pod, *([extra] if definition.extra_label else [])], one.value
                )
        yield family


def _gauge(name: str, help_text: str, value: float | None) -> GaugeMetricFamily:
    """A gauge of one sample; none at all while the value is unknown (None), never NaN."""
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _cost_families(exp: Exposition) -> Iterator[Metric]:
    """Figures that are absent until known (never NaN)."""
    yield _gauge(
        "cowtrace_process_peak_resident_memory_bytes",
        "Peak resident memory of cowtrace's own process (VmHWM; bcc compiles at start-up).",
        exp.peak_rss_bytes,
    )
    yield _gauge(
        "cowtrace_events_per_second",
        "Classified events (copies, reuses, zero-fills: records drained plus records lost) "
        "per second over the last refresh interval.",
        exp.events_per_second,
    )
    yield _gauge(
        "cowtrace_bpf_run_time_seconds_per_event",
        "Run time of cowtrace's BPF programs per classified event over the last refresh "
        "interval (the programs run for every process's faults, so this is what an event "
        f"cost the host); absent while kernel.bpf_stats_enabled=0 (`{BPF_STATS_ON}`).",
        exp.bpf_seconds_per_event,
    )


class SnapshotCollector(Collector):
    """A prometheus_client collector over the exporter's latest Exposition."""

    def __init__(self) -> None:
        self.exposition = Exposition()

    def collect(self) -> Iterator[Metric]:
        exp = self.exposition
        yield from _member_families(
            MEMBER_COUNTERS, exp.counters, exp.label_names, exp.pods, counter=True
        )
        yield from _member_families(
            MEMBER_GAUGES, exp.gauges, exp.label_names, exp.pods, counter=False
        )

        processes = GaugeMetricFamily(
            "cowtrace_family_processes",
            "Live processes in a traced family (its root and every descendant by fork).",
            labels=["root", "comm", *POD_LABELS],
        )
        for root, comm, alive in exp.families:
            processes.add_metric([root, comm, *exp.pods.get(root, NO_POD_LABELS)], alive)
        yield processes
        yield _gauge("cowtrace_families", "Process families being traced.", len(exp.families))

        health = exp.health
        yield _counter(
            "cowtrace_lost_events",
            "Detail records the kernel dropped because the ring was full (counts stay exact).",
            health.lost_events,
        )
        yield _counter(
            "cowtrace_lost_lifecycle_events",
            "Fork/exec/exit records the kernel dropped (members are then named from /proc).",
            health.lost_proc_events,
        )
        yield _counter(
            "cowtrace_events",
            "Classified fault records (copies, reuses, zero-fills) drained from the kernel.",
            health.events,
        )
        full = CounterMetricFamily(
            "cowtrace_table_full",
            "Inserts refused because a kernel table of the tracer was full.",
            labels=["table"],
        )
        for table, count in sorted(health.table_full.items()):
            full.add_metric([table], count)
        yield full

        yield _gauge(
            "cowtrace_bpf_stats_enabled",
            "1 when kernel.bpf_stats_enabled=1, so the BPF run-time metrics are counted "
            f"(`{BPF_STATS_ON}` turns it on).",
            0 if exp.bpf_stats is None else 1,
        )
        run_time = CounterMetricFamily(
            "cowtrace_bpf_run_time_seconds",
            "Time cowtrace's BPF programs ran in the kernel (fdinfo run_time_ns; counted only "
            "while kernel.bpf_stats_enabled=1).",
            labels=["program"],
        )
        runs = CounterMetricFamily(
            "cowtrace_bpf_runs",
            "Runs of cowtrace's BPF programs (fdinfo run_cnt; counted only while "
            "kernel.bpf_stats_enabled=1).",
            labels=["program"],
        )
        for program, (seconds, count) in sorted((exp.bpf_stats or {}).items()):
            run_time.add_metric([program], seconds)
            runs.add_metric([program], count)
        yield run_time
        yield runs
        yield from _cost_families(exp)
        by_type = CounterMetricFamily(
            "cowtrace_python_type_copied_bytes",
            "Bytes of copied pages apportioned to the Python objects on them, by the objects' "
            "type (CPython members): the top types by name (--python-types-top), the rest as "
            'type="other" (a type counts here from when it entered the top N; leaving, its count '
            "goes to other).",
            labels=["type"],
        )
        for name, value in exp.python_types:
            by_type.add_metric([name], value)
        yield by_type
        over_budget = CounterMetricFamily(
            "cowtrace_python_type_pages_over_budget",
            "Copied pages of CPython members not examined for Python types because resolving "
            "them was over its time budget (--python-types-budget): the copied bytes by type "
            "leave them out; copy counts are exact regardless.",
        )
        if exp.python_pages_over_budget is not None:
            over_budget.add_metric([], exp.python_pages_over_budget)
        yield over_budget

        yield _gauge(
            "cowtrace_delayacct_enabled",
            "1 when cowtrace reads delay accounting (--delayacct).",
            int(exp.delayacct),
        )
        yield _gauge(
            "cowtrace_attribution_enabled",
            "1 when attribution (mapping kinds, exit-time copies) is on in this tracer.",
            int(exp.attribution),
        )
        info = GaugeMetricFamily(
            "cowtrace_build_info", "cowtrace's version (always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


__all__ = ["GROUP_LABELS", "MEMBER_LABELS", "Exposition", "Health", "SnapshotCollector"]
