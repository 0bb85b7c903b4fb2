"""pprof's profile format (google/pprof proto/profile.proto), gzipped, for ``go tool pprof``,
Pyroscope, Parca, Grafana and the other tools that read it.

Two sample types, ``copies/count`` then ``copied/bytes`` (the default one shown), over the
stacks of stacks.py. Every distinct frame is one Location with one Line and Function:

- a Python frame's Function has its file and the line its name gives (today the code object's
  first line; also ``start_line``), and no Mapping;
- a native frame's Function is named by its symbol, with the module as its file, and belongs
  to one Mapping per module, with ``has_functions`` set, so pprof does not try to symbolize it
  again (the addresses were never kept, only the names: locations carry address 0). A frame
  the object has no symbol for keeps its whole name, ``[unknown] (module)``, so pprof, which
  ranks functions by name, does not merge the unknowns of every module into one;
- cowtrace's synthetic frames (``[no stack]``, ``[truncated stack]``, ``[native callers
  unknown]``) are plain Functions, so their share stays visible.

Field numbers below are profile.proto's; the wire format is in protowire.py.
"""

from __future__ import annotations

import gzip

from cowtrace import __version__
from cowtrace.report.flame import NATIVE, Frame
from cowtrace.report.model import ReportData
from cowtrace.report.protowire import integer, length_delimited, packed, string
from cowtrace.report.stacks import frame_source, profile_stacks

SAMPLE_TYPES = (("copies", "count"), ("copied", "bytes"))
DEFAULT_SAMPLE_TYPE = "copied"


class _Strings:
    """The string table: "" at index 0, each string once."""

    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str | None) -> int:
        if not text:
            return 0
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.table)
            self.table.append(text)
        return index


def pprof_message(data: ReportData) -> bytes:
    """The serialized (uncompressed) ``perftools.profiles.Profile``."""
    strings = _Strings()
    stacks = profile_stacks(data)
    mappings: dict[str, int] = {}  # module -> mapping id
    functions: dict[tuple[str, str | None, int | None], int] = {}  # (name, file, line) -> id
    locations: dict[Frame, int] = {}  # frame -> location id
    out: list[bytes] = []
    for kind, unit in SAMPLE_TYPES:
        out.append(length_delimited(1, integer(1, strings(kind)) + integer(2, strings(unit))))
    mapping_msgs: list[bytes] = []
    location_msgs: list[bytes] = []
    function_msgs: list[bytes] = []

    def location(frame: Frame) -> int:
        known = locations.get(frame)
        if known is not None:
            return known
        source = frame_source(frame)
        mapping_id = 0
        if frame[1] == NATIVE and source.module:
            mapping_id = mappings.get(source.module, 0)
            if not mapping_id:
                mapping_id = mappings[source.module] = len(mappings) + 1
                mapping_msgs.append(
                    integer(1, mapping_id)
                    + integer(5, strings(source.module))
                    + integer(7, True)  # has_functions
                )
        file = source.file or (source.module if mapping_id else None)
        fkey = (source.function, file, source.line)
        function_id = functions.get(fkey)
        if function_id is None:
            function_id = functions[fkey] = len(functions) + 1
            name = strings(source.function)
            function_msgs.append(
                integer(1, function_id)
                + integer(2, name)
                + integer(3, name)  # system_name: no mangled name is kept
                + integer(4, strings(file))
                + integer(5, source.line or 0)  # start_line
            )
        location_id = locations[frame] = len(locations) + 1
        line = integer(1, function_id) + integer(2, source.line or 0)
        location_msgs.append(
            integer(1, location_id) + integer(2, mapping_id) + length_delimited(4, line)
        )
        return location_id

    for stack in stacks:
        leaf_first = [location(frame) for frame in reversed(stack.frames)]
        values = (stack.copies, stack.copied_bytes)
        out.append(length_delimited(2, packed(1, leaf_first) + packed(2, values)))
    out += [length_delimited(3, m) for m in mapping_msgs]
    out += [length_delimited(4, m) for m in location_msgs]
    out += [length_delimited(5, m) for m in function_msgs]
    comment = strings(f"cowtrace {__version__}: copy-on-write copies in {data.path}")
    default_type = strings(DEFAULT_SAMPLE_TYPE)
    if data.duration_s is not None:
        out.append(integer(10, round(data.duration_s * 1e9)))
    out.append(packed(13, [comment]))
    out.append(integer(14, default_type))
    # The table last: every string above is in it by now.
    out += [string(6, text) for text in strings.table]
    return b"".join(out)


def render_pprof(data: ReportData) -> bytes:
    """The gzipped profile, as pprof files are on disk (mtime 0: same input, same bytes)."""
    return gzip.compress(pprof_message(data), mtime=0)
