"""The --json summary, written once when tracing ends (product.md, "Contracts").

Schema 1: `{"schema": 1, "root_pid", "duration_s", "totals": {...}, "processes": [...]}`.
Fields are only ever added, never renamed: other tools parse this (`cowtrace report` too).

With attribution on (the engine's final view, cowtrace/results.py: an `AttributionView` with
`exits`), three top-level sections are added, each sorted by copied bytes, most first, at most
50 entries; a frame is a string `"function (module)"`, stacks are innermost frame first:

- `"regions"`: copies by mapping, grouped by kind, name and section across the family:
  `[{"kind": "heap"|"stack"|"anon"|"anon_named"|"file"|"shm"|"other", "name": str,
     "section": ".data"|".bss"|null, "copies", "copied_bytes", "reuses", "zero_fills",
     "processes"}]`.  name is "[heap]", "[stack]", "" (plain anonymous), "[anon:NAME]", a file
  path, a shm object, or "[unknown]" for addresses in no mapping cowtrace knew of; section is
  the binary's writable section holding the page (a binary's .bss tail past its file mapping
  is reported as the file, section ".bss").  Events without an address (get_user_pages) are
  in no region.
- `"allocations"`: copies by allocation site (the malloc'd blocks the copied pages overlap):
  `[{"site": [frames], "origin": "malloc"|"recovered", "allocator": "glibc"|"jemalloc"|
     "tcmalloc", "blocks", "block_bytes", "copies", "copied_bytes",
     "largest": [{"addr", "size", "copied_pages"}]}]`.  A copy counts once, for the block
  covering most of its page; `blocks` counts every live block that a copied page overlapped
  (a page of many small blocks counts them all) and `block_bytes` their sizes; `largest`
  lists the site's biggest such blocks with the number of their pages copied by anyone.
  "recovered" blocks were found walking glibc's heap at attach: no site (`[]`).
- `"writers"`: copies by native writer stack: `[{"frames": [frames], "copies",
  "copied_bytes", "processes", "truncated"}]`; `truncated` means the stack walk hit an
  address in no executable mapping (no frame pointers): only the frames shown are real.

`"tracer"` says how the tracer fared and what it cost: `"attach_s"` (cowtrace's start to the
family traced), the kernel's health counters (`"lost_events"`, `"stack_errors"`, ...) and, in
the final summary of a session (cowtrace/metrics/cost.py):
`"cpu_s"` (cowtrace's user + system CPU since it started, every thread, compile included),
`"tracing_cpu_s"` (the part spent over `duration_s`) and `"tracing_cpu_percent"` (of one core,
over `duration_s`), `"rss_bytes"` and `"peak_rss_bytes"` (cowtrace's resident memory at the end
and at its peak), `"events"` (copies + reuses + zero-fills, the totals' sum) and
`"events_per_second"` (events / duration_s), `"bpf_stats"` ("on", "off" or "partial": whether
kernel.bpf_stats_enabled counted the programs' run time for the whole session), `"bpf_run_ns"`
and `"bpf_runs"` (all of cowtrace's programs; null when off), `"bpf_ns_per_event"`
(bpf_run_ns / events, only when "on": the programs also run for other processes' faults, so
this is what one event cost the host) and `"bpf_programs"` ({name: {"run_ns", "runs"}}).

A frame of an object with no symbol there is `"module+0xOFFSET (module)"` (OFFSET into the
file); then `"modules"` says, per such module basename, `{"path", "build_id", "loads":
[[file offset, link address, size], ...]}` (its GNU build-id and PT_LOAD segments), so
`cowtrace report` names the frame from `/usr/lib/debug/.build-id/xx/rest.debug` installed
later (report/resymbolize.py).

CPython members add `"python_types"`: copied bytes by the Python type of the objects on the
copied pages (cowtrace/python/copied_types.py), most first, at most 100 rows:
`[{"type": "pkg.mod.Class"|"dict"|..., "objects", "copied_bytes", "pages", "by_category":
{"refcount"|"gc"|"allocator"|"teardown"|"other": bytes}}]` (a page's bytes go to the objects
on it; `objects` counts those whose block starts on a copied page; by_category by the writer's
category, writers.py), and `"python_pages"`, those members' copied pages by class:
`{"objects", "no_object", "not_resolved", "unreadable", "over_budget"}`; `over_budget` counts
the copied pages not examined for types because their resolution was over its time budget
(`--python-types-budget`, python/budget.py): `python_types` leaves them out, the copy counts
do not.  Each process of such a family has its own `"python_types"` (at most 20 rows).

Each process gains `"exit_copies"` (copies in the last exit window before it exited, waste:
the memory is freed right after) and `"exit_writers": [{"frames", "copies"}]`, their stacks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from cowtrace.metrics.cost import cost_figures
from cowtrace.model import Counts, Member, Snapshot
from cowtrace.results import AttributionView, ProcessExit, PythonTypeStat

SCHEMA_VERSION = 1
SUMMARY_TYPES = 100  # python_types rows of the family


def _counts(counts: Counts) -> dict[str, int]:
    return {
        "copies": counts.copies,
        "copied_bytes": counts.copied_bytes,
        "reuses": counts.reuses,
        "zero_fills": counts.zero_fills,
        "file_copies": counts.file_copies,
        "gup_copies": counts.gup_copies,
        "wp_retries": counts.wp_retries,
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
        "ns_pid": member.ns_pid,
    }


def summary_dict(snapshot: Snapshot, tracer_stats: dict[str, int] | None = None) -> dict[str, Any]:
    """The summary of a final snapshot; its view, when it is the engine's final one (with
    `exits`), adds the attribution sections and per-process fields, and `tracer_stats` the
    kernel's health counters (records lost, stack captures failed)."""
    view = snapshot.attribution
    exits = view.exits if view is not None else None
    totals = _counts(snapshot.totals)
    totals["lost_events"] = snapshot.lost_events
    processes = [_process(member) for member in snapshot.members]
    if view is not None and view.python_pages:
        by_pid = view.python_types_by_pid
        for process in processes:
            process["python_types"] = python_type_rows(by_pid.get(process["pid"], ()))
    if exits is not None:
        for process in processes:
            process.update(exit_fields(exits.get(process["pid"])))
    duration_s = round(snapshot.duration, 6)
    summary = {
        "schema": SCHEMA_VERSION,
        "root_pid": snapshot.root_pid,
        "duration_s": duration_s,
        "end_reason": snapshot.end_reason,
        "totals": totals,
        "processes": processes,
        "tracer": _tracer(snapshot, duration_s, tracer_stats),
        **_python_sections(view),
        **_python_types_sections(view),
    }
    if view is not None and exits is not None:
        summary.update(attribution_sections(view))
    return summary


def exit_fields(ended: ProcessExit | None) -> dict[str, Any]:
    """A process' `exit_copies` and `exit_writers` (frames only)."""
    if ended is None:
        return {"exit_copies": 0, "exit_writers": []}
    return {
        "exit_copies": ended.copies,
        "exit_writers": [{"frames": list(w.frames), "copies": w.copies} for w in ended.writers],
    }


def attribution_sections(view: AttributionView) -> dict[str, Any]:
    """`regions`, `allocations`, `writers` and, when any frame needs it, `modules`."""
    sections: dict[str, Any] = {
        "regions": [
            {
                "kind": r.kind,
                "name": r.name,
                "section": r.section,
                "copies": r.copies,
                "copied_bytes": r.copied_bytes,
                "reuses": r.reuses,
                "zero_fills": r.zero_fills,
                "processes": r.processes,
            }
            for r in view.regions
        ],
        "allocations": [
            {
                "site": list(a.site),
                "origin": a.origin,
                "allocator": a.allocator,
                "blocks": a.blocks,
                "block_bytes": a.block_bytes,
                "copies": a.copies,
                "copied_bytes": a.copied_bytes,
                "largest": [
                    {"addr": b.addr, "size": b.size, "copied_pages": b.copied_pages}
                    for b in a.largest
                ],
            }
            for a in view.allocations
        ],
        "writers": [
            {
                "frames": list(w.frames),
                "copies": w.copies,
                "copied_bytes": w.copied_bytes,
                "processes": w.processes,
                "truncated": w.truncated,
            }
            for w in view.writers
        ],
    }
    if view.modules:
        sections["modules"] = view.modules
    return sections


def _tracer(
    snapshot: Snapshot, duration_s: float, tracer_stats: dict[str, int] | None
) -> dict[str, Any]:
    """Health counters and, once tracing has ended, what it cost."""
    tracer: dict[str, Any] = {"attach_s": round(snapshot.attach_s, 3), **(tracer_stats or {})}
    if snapshot.cost is not None:
        t = snapshot.totals
        events = t.copies + t.reuses + t.zero_fills
        tracer.update(cost_figures(snapshot.cost, duration_s, events).as_dict())
    return tracer


def _python_sections(view: AttributionView | None) -> dict[str, Any]:
    """`python_writers` (copies per Python writer stack), `python_remedies` (what gc.freeze()
    and moving data out of objects would have saved) and `why` (one-line causes); left out
    when there is no view, or only the engine's final view with empty tables and no Python."""
    if view is None or (view.exits is not None and not (view.tables or view.python)):
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
        "python_remedies": [
            {
                "remedy": remedy.remedy,
                "action": remedy.action,
                "avoids_copies": remedy.copies,
                "avoids_bytes": remedy.copied_bytes,
                "share_of_python_copies": round(remedy.share, 4),
            }
            for remedy in view.python_remedies
        ],
        "why": list(view.why),
    }


def _python_types_sections(view: AttributionView | None) -> dict[str, Any]:
    """`python_types` (copied bytes by Python type) and `python_pages`, when resolved."""
    if view is None or not view.python_pages:
        return {}
    return {
        "python_types": python_type_rows(view.python_types[:SUMMARY_TYPES]),
        "python_pages": dict(view.python_pages),
    }


def python_type_rows(stats: Iterable[PythonTypeStat]) -> list[dict[str, Any]]:
    """`python_types` rows (summary, per family and per process)."""
    return [
        {
            "type": stat.type,
            "objects": stat.objects,
            "copied_bytes": stat.copied_bytes,
            "pages": stat.pages,
            "by_category": dict(stat.by_category),
        }
        for stat in stats
    ]


def write_summary(
    snapshot: Snapshot, path: str, tracer_stats: dict[str, int] | None = None
) -> None:
    text = json.dumps(summary_dict(snapshot, tracer_stats), indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(path, "w") as out:
            out.write(text)
