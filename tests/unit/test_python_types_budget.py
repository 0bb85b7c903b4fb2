"""The time budget of the Python-types resolution (cowtrace/python/budget.py): with a fake
clock and a fixed cost per page, exactly which copied pages are examined and how many are
counted as over the budget.

Costs are powers of two (1/1024 s a page) so every figure below is exact in floating point.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cowtrace.kernel.abi import EVENT_DTYPE, KIND_COPY, KIND_REUSE
from cowtrace.python.budget import TypesBudget, parse_share, systematic_sample
from cowtrace.python.copied_types import CopiedTypes
from cowtrace.python.detect import PythonImage
from cowtrace.python.offsets import table_offsets
from cowtrace.python.tracker import PythonStacks
from cowtrace.results import OVER_BUDGET

PAGE_S = 2.0**-10  # the fake cost of examining one page


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(clock: Clock, share: float | None = 0.25) -> TypesBudget:
    """A budget of `share`, a 1 s burst (1024 pages), that knows the cost per page already."""
    return TypesBudget(share, burst_s=1.0, s_per_page=PAGE_S, clock=clock)


def test_systematic_sample_spreads_evenly() -> None:
    assert systematic_sample(10, 4).tolist() == [0, 2, 5, 7]
    assert systematic_sample(6, 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert systematic_sample(5, 0).tolist() == []


def test_within_the_credit_every_page_is_examined() -> None:
    clock = Clock()
    plan = budget(clock)
    assert plan.plan(1024).tolist() == list(range(1024))  # the whole burst


def resolve(clock: Clock, plan: TypesBudget, positions: np.ndarray, slowdown: float = 1) -> None:
    """The fake resolution of the pages at `positions`: PAGE_S a page (times `slowdown`)."""
    took = len(positions) * PAGE_S * slowdown
    clock.now += took
    plan.spend(took, len(positions))


def test_over_the_credit_a_systematic_sample() -> None:
    clock = Clock()
    plan = budget(clock)
    # 1 s of credit: 1024 of 3072 pages, every third; they take the 1 s (t = 1).
    first = plan.plan(3072)
    assert first.tolist() == list(range(0, 3072, 3))
    resolve(clock, plan, first)
    assert plan.credit == 0.0
    # At t = 3 a quarter of the 3 s since the last plan came back: 0.75 s, 768 of 1000 pages.
    clock.now = 3.0
    second = plan.plan(1000)
    assert second.tolist() == [i * 1000 // 768 for i in range(768)]
    resolve(clock, plan, second)  # t = 3.75: the 0.75 s are spent
    # The resolution's own time counts as wall time too: 0.25 * 0.75 s, 192 pages of 1000.
    assert plan.plan(1000).tolist() == [i * 1000 // 192 for i in range(192)]


def test_a_batch_over_its_plan_is_repaid_before_the_next() -> None:
    clock = Clock()
    plan = budget(clock)
    positions = plan.plan(1024)
    resolve(clock, plan, positions, slowdown=2)  # the machine got busy: 2 s for 1 s planned
    assert (clock.now, plan.credit) == (2.0, -1.0)
    clock.now = 4.0  # 0.25 * 4 s since the last plan: the debt is repaid, no more
    assert plan.plan(10).tolist() == []
    assert plan.credit == 0.0


def test_credit_never_exceeds_the_burst() -> None:
    clock = Clock()
    plan = budget(clock)
    clock.now += 3600.0
    assert len(plan.plan(100_000)) == 1024


def test_the_cost_per_page_follows_what_was_measured() -> None:
    """Decayed sums of seconds and pages: the prior counts as half a page after one batch."""
    clock = Clock()
    plan = budget(clock)
    resolve(clock, plan, plan.plan(512), slowdown=2)  # 1 s for 512 pages
    assert plan.s_per_page == (0.5 * PAGE_S + 1.0) / (0.5 + 512)
    clock.now = 5.0  # the credit is back to 1 s (0 + 0.25 * 5 s, at most the burst)
    assert len(plan.plan(10_000)) == int(1.0 // plan.s_per_page) == 512


def test_no_limit() -> None:
    clock = Clock()
    plan = budget(clock, share=None)
    plan.spend(100.0, 10)
    assert plan.plan(50_000).tolist() == list(range(50_000))


@pytest.mark.parametrize(
    ("text", "share"), [("0.25", 0.25), ("1", 1.0), ("none", None), ("None", None)]
)
def test_parse_share(text: str, share: float | None) -> None:
    assert parse_share(text) == share


@pytest.mark.parametrize("text", ["0", "-0.1", "1.5", "quarter", ""])
def test_parse_share_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_share(text)


class RecordedTypes(CopiedTypes):
    """Copied types whose examining costs PAGE_S a page on the fake clock, and which records
    the pages it was given."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.examined: list[tuple[int, list[int]]] = []

    def add_copies(self, image, pid, readers, addrs, categories, blocks=None) -> None:  # noqa: ANN001
        self.examined.append((pid, addrs.tolist()))
        self.clock.now += len(addrs) * PAGE_S


def records(pids: list[int], kinds: list[int]) -> np.ndarray:
    out = np.zeros(len(pids), EVENT_DTYPE)
    out["pid"] = pids
    out["kind"] = kinds
    out["addr"] = 0x1000 * (np.arange(len(pids)) + 1)
    out["pystack_id"] = -1
    return out


def test_the_tracker_examines_the_sample_and_counts_the_rest() -> None:
    """A batch of 3072 copies of CPython members (pids 10, 11) between copies of a C member
    (pid 12) and reuses: the budget sees only the 3072, ordered by member and address, and
    examines every third (a share of each member: not every third in the ring's order, which
    here would be pid 10's pages only); it counts 2048 as over the budget.  The C member's
    copies and the reuses are no Python page at all."""
    clock = Clock()
    python = PythonStacks(budget(clock))
    python.types = types = RecordedTypes(clock)
    image = PythonImage(pid=10, version="3.11", offsets=table_offsets("3.11"), runtime=0, path="")
    python.images = {10: image, 11: image}
    pattern = [10, 12, 11, 10]  # 4 records, 3 of them Python copies: 1024 rounds = 3072
    batch = records(pattern * 1024, [KIND_COPY] * 4096)
    batch = np.concatenate([batch, records([10] * 8, [KIND_REUSE] * 8)])
    python.on_fault_events(batch)
    mine = {
        pid: batch["addr"][(batch["pid"] == pid) & (batch["kind"] == KIND_COPY)] for pid in (10, 11)
    }
    ordered = [(pid, addr) for pid in (10, 11) for addr in sorted(mine[pid].tolist())]
    chosen = ordered[::3]
    want = {pid: [addr for p, addr in chosen if p == pid] for pid in (10, 11)}
    assert dict(types.examined) == want
    assert (len(want[10]), len(want[11])) == (683, 341)
    assert types.view_fields()["python_pages"][OVER_BUDGET] == 2048
    assert types.active
    assert python.budget.credit == 0.0
    # The next batch, at once: the 1 s just spent earned 0.25 s, 256 of 300 pages.
    second = records([11] * 300, [KIND_COPY] * 300)
    python.on_fault_events(second)
    order = np.sort(second["addr"])
    assert types.examined[2:] == [(11, [int(order[i * 300 // 256]) for i in range(256)])]
    assert types.over_budget == 2048 + 44


# ---- where the count is shown: next to the pages by class ------------------------------------


def snapshot_with(pages: dict[str, int], types: tuple = ()):  # noqa: ANN201
    from cowtrace.model import Counts, Snapshot
    from cowtrace.results import AttributionView

    view = AttributionView(python_types=types, python_pages=pages, python=True)
    return Snapshot(root_pid=1, started=0.0, now=1.0, members=[], totals=Counts(), attribution=view)


def test_pane_and_summary_lines_say_what_was_not_examined() -> None:
    """Even with no type resolved at all (every page over the budget), the section is shown:
    an empty table would hide that pages were left out."""
    from rich.console import Console

    from cowtrace.render.types_pane import python_types_lines, python_types_pane

    pages = {"objects": 3, "no_object": 0, "not_resolved": 0, "unreadable": 0, OVER_BUDGET: 1234}
    snapshot = snapshot_with(pages)
    console = Console(record=True, width=120)
    console.print(python_types_pane(snapshot))
    text = console.export_text()
    assert "pages not examined, over the time budget (--python-types-budget): 1,234" in text
    assert python_types_lines(snapshot)[-1] == (
        "  pages: 3 with objects, 0 with none, 0 not resolved, "
        "1,234 not examined (over the time budget)"
    )
    quiet = snapshot_with({**pages, OVER_BUDGET: 0})
    assert python_types_pane(quiet) is None and python_types_lines(quiet) == []


def test_summary_json_carries_the_count_in_python_pages() -> None:
    from cowtrace.output.summary import summary_dict

    pages = {"objects": 3, "no_object": 1, "not_resolved": 0, "unreadable": 0, OVER_BUDGET: 7}
    assert summary_dict(snapshot_with(pages))["python_pages"] == pages


def test_view_fields_count_over_budget_even_when_zero() -> None:
    """`python_pages` always has the key for CPython members: 0 says nothing was left out."""
    types = CopiedTypes()
    assert types.view_fields()["python_pages"] == {
        "objects": 0, "no_object": 0, "not_resolved": 0, "unreadable": 0, OVER_BUDGET: 0,
    }  # fmt: skip
    assert not types.active
    types.skip(5)
    assert types.active and types.view_fields()["python_pages"][OVER_BUDGET] == 5


def test_metric_counts_pages_over_budget_for_cpython_members_only() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from cowtrace.metrics.collector import Exposition, SnapshotCollector

    def scrape(exposition: Exposition) -> str:
        collector = SnapshotCollector()
        collector.exposition = exposition
        registry = CollectorRegistry()
        registry.register(collector)
        return generate_latest(registry).decode()

    assert "cowtrace_python_type_pages_over_budget_total 7.0" in scrape(
        Exposition(python_pages_over_budget=7)
    )
    assert "\ncowtrace_python_type_pages_over_budget_total " not in scrape(Exposition())


def test_exporter_sums_each_view_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's families share one view (one tracer's count): it counts once."""
    from cowtrace.metrics.address import ListenAddress
    from cowtrace.metrics.collector import Health
    from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions

    monkeypatch.setattr("cowtrace.metrics.exporter.rollup_gauges", lambda pid: {})
    from cowtrace.host.cgroup import PodIdentity

    options = MetricsOptions(ListenAddress("127.0.0.1", 0), pod_identity=lambda _pid: PodIdentity())
    exporter = MetricsExporter(options, log=lambda _m: None)
    shared = snapshot_with({"objects": 1, OVER_BUDGET: 9})
    other_family = dataclasses.replace(shared, root_pid=2)
    exporter.update([shared, other_family], Health())
    assert exporter.collector.exposition.python_pages_over_budget == 9
    exporter.update([dataclasses.replace(shared, attribution=None)], Health())
    assert exporter.collector.exposition.python_pages_over_budget is None


# ---- the option ------------------------------------------------------------------------------


def test_option_reaches_trace_run_and_agent(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    from cowtrace.cli import main
    from cowtrace.commands import agent as agent_module
    from cowtrace.commands import run as run_module
    from cowtrace.commands import trace as trace_module

    sessions: list = []
    monkeypatch.setattr(trace_module, "trace", lambda _pid, _o, s: sessions.append(s) or 0)
    monkeypatch.setattr(run_module, "run", lambda _argv, _o, s: sessions.append(s) or 0)
    agents: list = []
    monkeypatch.setattr(agent_module, "agent", lambda options: agents.append(options) or 0)
    assert main(["trace", "1"]) == 0
    assert main(["trace", "1", "--python-types-budget", "0.5"]) == 0
    assert main(["run", "--python-types-budget", "none", "--", "true"]) == 0
    assert [s.python_types_budget for s in sessions] == [0.25, 0.5, None]
    assert main(["agent", "--pid", "1"]) == 0
    assert main(["agent", "--pid", "1", "--python-types-budget", "0.1"]) == 0
    assert [a.python_types_budget for a in agents] == [0.25, 0.1]
    assert main(["trace", "1", "--python-types-budget", "0"]) == 2
    assert "Invalid value for '--python-types-budget'" in capsys.readouterr().err
