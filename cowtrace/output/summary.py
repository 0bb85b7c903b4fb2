"""The --json summary, written once when tracing ends (product.md, "Contracts").

Schema 1: `{"schema": 1, "root_pid", "duration_s", "totals": {...}, "processes": [...]}`.
Fields are only ever added, never renamed: other tools parse this.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from cowtrace.model import Counts, Member, Snapshot

if TYPE_CHECKING:
    from cowtrace.attribution.sink import AttributionSink

SCHEMA_VERSION = 1


def _counts(counts: Counts) -> dict[str, int]:
    return {
        "copies": counts.copies,
        "copied_bytes": counts.copied_bytes,
        "reuses": counts.reuses,
        "zero_fills": counts.zero_fills,
        "file_copies": counts.file_copies,
        "gup_copies": counts.gup_copies,
    }


def _process(member: Member) -> dict[str, Any]:
    status = member.exit_status
    return {
        "pid": member.pid,
        "ppid": member.ppid,
        "comm": member.comm,
        "role": member.role.value,
        **_counts(member.counts),
        "exited": member.exited,
        "exit_code": status.code if status else None,
        "exit_signal": status.signal if status else None,
        "adopted": member.adopted,
        "execs": member.execs,
    }


def summary_dict(
    snapshot: Snapshot,
    sink: AttributionSink | None = None,
    tracer_stats: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The summary; `sink` adds the attribution sections and per-process fields, and
    `tracer_stats` the kernel's health counters (records lost, stack captures failed)."""
    totals = _counts(snapshot.totals)
    totals["lost_events"] = snapshot.lost_events
    processes = [_process(member) for member in snapshot.members]
    if sink is not None:
        for process in processes:
            process.update(sink.process_fields(process["pid"]))
    summary = {
        "schema": SCHEMA_VERSION,
        "root_pid": snapshot.root_pid,
        "duration_s": round(snapshot.duration, 6),
        "end_reason": snapshot.end_reason,
        "totals": totals,
        "processes": processes,
        "tracer": {"attach_s": round(snapshot.attach_s, 3), **(tracer_stats or {})},
        **_python_sections(snapshot),
    }
    if sink is not None:
        summary.update(sink.summary_sections())
    return summary


def _python_sections(snapshot: Snapshot) -> dict[str, Any]:
    """`python_writers` (copies per Python writer stack) and `why` (one-line causes)."""
    view = snapshot.attribution
    if view is None:
        return {}
    return {
        "python_writers": [
            {
                "frames": list(stat.frames),
                "native_leaf": stat.native_leaf,
                "category": stat.category,
                "copies": stat.copies,
                "copied_bytes": stat.copied_bytes,
            }
            for stat in view.python_writers
        ],
        "why": list(view.why),
    }


def write_summary(
    snapshot: Snapshot,
    path: str,
    sink: AttributionSink | None = None,
    tracer_stats: dict[str, int] | None = None,
) -> None:
    text = json.dumps(summary_dict(snapshot, sink, tracer_stats), indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(path, "w") as out:
            out.write(text)
