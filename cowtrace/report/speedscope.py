"""A speedscope file (https://www.speedscope.app/file-format-schema.json): two "sampled"
profiles over one shared frame table, one weighted by copied bytes (unit ``bytes``), one by
copies (unit ``none``). Each sample is a stack of frame indices, outermost frame first, as
speedscope's sampled profiles take them. A frame is named by its function, as py-spy's
speedscope output does; Python frames carry their file and line, native ones their module as
``file`` (speedscope shows both beside the name).
"""

from __future__ import annotations

import json

from cowtrace import __version__
from cowtrace.report.flame import Frame
from cowtrace.report.model import ReportData
from cowtrace.report.stacks import frame_source, profile_stacks

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope_document(data: ReportData) -> dict:
    """The file as a JSON-ready dict."""
    stacks = profile_stacks(data)
    index: dict[Frame, int] = {}
    frames: list[dict] = []
    samples: list[list[int]] = []
    for stack in stacks:
        sample = []
        for frame in stack.frames:
            i = index.get(frame)
            if i is None:
                i = index[frame] = len(frames)
                frames.append(_frame(frame))
            sample.append(i)
        samples.append(sample)

    def profile(name: str, unit: str, weights: list[int]) -> dict:
        return {
            "type": "sampled",
            "name": name,
            "unit": unit,
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        }

    return {
        "$schema": SCHEMA,
        "name": f"cowtrace: {data.path}",
        "exporter": f"cowtrace {__version__}",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            profile("copied bytes", "bytes", [s.copied_bytes for s in stacks]),
            profile("copies", "none", [s.copies for s in stacks]),
        ],
    }


def _frame(frame: Frame) -> dict:
    source = frame_source(frame)
    entry: dict = {"name": source.function}
    if source.file is not None:
        entry["file"] = source.file
        if source.line is not None:
            entry["line"] = source.line
    elif source.module:
        entry["file"] = source.module
    return entry


def render_speedscope(data: ReportData) -> str:
    return json.dumps(speedscope_document(data), separators=(",", ":")) + "\n"
