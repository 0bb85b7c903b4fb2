"""Name `module+0xOFFSET (module)` frames from debug files found after the trace.

kernel/stacks.py writes a frame bcc could not name as the module's file offset, and the
summary's "modules" keeps each such module's build-id and PT_LOAD segments (as [file offset,
link address, size]).  Installed later, a -dbgsym package puts the module's symbols at
`DEBUG_ROOT/.build-id/xx/rest.debug`; its .symtab is indexed by link address, so a frame's
file offset goes through the recorded segments (a debug file keeps the addresses of the
segments but not their offsets) and the function holding that address names it:
`hidden_writer (libfoo.so)`.  A frame no debug file names is left as it was.

DEBUG_ROOT is /usr/lib/debug, or $COWTRACE_DEBUG_DIR, or `cowtrace report --debug-dir`.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any

from cowtrace.host import elf
from cowtrace.report.model import ReportData
from cowtrace.results import WriterStat

DEBUG_DIR_ENV = "COWTRACE_DEBUG_DIR"
# `module+0xOFFSET (module)` (a native frame) or `module+0xOFFSET` (a Python writer's leaf).
_FRAME = re.compile(r"(?P<module>[^()]+)\+0x(?P<offset>[0-9a-fA-F]+)(?: \((?P<paren>[^()]*)\))?")


def debug_root(given: str | None = None) -> str:
    """The debug tree: `given`, else $COWTRACE_DEBUG_DIR, else /usr/lib/debug."""
    return given or os.environ.get(DEBUG_DIR_ENV) or elf.DEBUG_ROOT


class Resymbolizer:
    """Frame name -> its new name, from the modules a summary recorded and a debug tree."""

    def __init__(self, modules: dict[str, Any], root: str) -> None:
        self._modules = modules
        self._root = root
        self._images: dict[str, elf.ElfImage | None] = {}
        self.named = 0  # frames renamed, for the caller to say so

    def _debug_image(self, module: str) -> tuple[elf.ElfImage, list[Any]] | None:
        info = self._modules.get(module)
        if not isinstance(info, dict) or not isinstance(info.get("build_id"), str):
            return None
        build_id = info["build_id"]
        if build_id not in self._images:
            path = elf.debug_file(build_id, self._root)
            self._images[build_id] = elf.load(path) if path else None
        image = self._images[build_id]
        loads = info.get("loads")
        return (image, loads) if image is not None and isinstance(loads, list) else None

    def name(self, frame: str, *, leaf: bool = False) -> str:
        match = _FRAME.fullmatch(frame)
        if match is None or (not leaf and match["paren"] != match["module"]):
            return frame
        found = self._debug_image(match["module"])
        if found is None:
            return frame
        image, loads = found
        offset = int(match["offset"], 16)
        for seg in loads:
            if not (isinstance(seg, list) and len(seg) == 3):
                continue
            if not all(isinstance(v, int) for v in seg):
                continue
            seg_offset, vaddr, size = seg
            if seg_offset <= offset < seg_offset + size:
                function = image.function_at(vaddr + offset - seg_offset)
                if function is None:
                    return frame
                self.named += 1
                return function if match["paren"] is None else f"{function} ({match['module']})"
        return frame


def _merged(rows: list[WriterStat]) -> list[WriterStat]:
    """Rows whose stacks became equal (two offsets in one function) as one row, heaviest
    first.  `processes` becomes the largest of theirs: the file does not say which processes
    the rows share, so this is a lower bound."""
    merged: dict[tuple[str, ...], WriterStat] = {}
    for row in rows:
        key = tuple(row.frames)
        found = merged.get(key)
        if found is None:
            merged[key] = row
            continue
        processes = found.processes
        if row.processes is not None:
            processes = max(found.processes or 0, row.processes)
        merged[key] = replace(
            found,
            copies=found.copies + row.copies,
            copied_bytes=found.copied_bytes + row.copied_bytes,
            truncated=found.truncated or row.truncated,
            processes=processes,
        )
    if len(merged) == len(rows):
        return rows
    return sorted(merged.values(), key=lambda r: -r.copied_bytes)


def resymbolize(data: ReportData, root: str | None = None) -> int:
    """Rename in place every `module+0xOFFSET` frame a debug file under `root` names; return
    how many frame occurrences were renamed."""
    if not data.modules:
        return 0
    names = Resymbolizer(data.modules, debug_root(root))

    def frames(stack: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(names.name(f) for f in stack)

    if data.writers is not None:
        data.writers = _merged([replace(w, frames=frames(w.frames)) for w in data.writers])
    for process in data.processes:
        if process.exit is not None:
            writers = [replace(w, frames=frames(w.frames)) for w in process.exit.writers]
            process.exit = replace(process.exit, writers=tuple(_merged(writers)))
    if data.allocations is not None:
        data.allocations = [replace(a, site=frames(a.site)) for a in data.allocations]
    if data.python_writers is not None:
        data.python_writers = [
            replace(p, native_leaf=names.name(p.native_leaf, leaf=True)) if p.native_leaf else p
            for p in data.python_writers
        ]
    for sample in data.samples or []:
        if sample.native is not None:
            sample.native = frames(sample.native)
    return names.named
