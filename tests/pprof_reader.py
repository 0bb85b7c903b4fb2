"""An independent reader for pprof files: protoc (grpcio-tools) compiles the vendored
tests/data/profile.proto, google/pprof's own schema, and the protobuf package decodes with it.
Nothing here shares code or field numbers with cowtrace's writer (cowtrace/report/pprof.py)."""

from __future__ import annotations

import functools
import gzip
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

PROTO = Path(__file__).resolve().parent / "data" / "profile.proto"


@functools.cache
def profile_class() -> Any:
    """The ``perftools.profiles.Profile`` message class, compiled from profile.proto."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.desc"
        status = protoc.main(
            ["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", str(PROTO)]
        )
        assert status == 0, "protoc could not compile profile.proto"
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("perftools.profiles.Profile"))


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int
    start_line: int
    mapping: str | None  # the mapping's file name; None without a mapping


def read_pprof(blob: bytes) -> Any:
    """The decoded Profile message of a gzipped pprof file."""
    return profile_class().FromString(gzip.decompress(blob))


def stacks(profile: Any) -> list[tuple[tuple[Frame, ...], tuple[int, ...]]]:
    """Each sample as (frames leaf first, values), with every id resolved through the tables
    (and checked to resolve: a dangling id fails here)."""
    strings = list(profile.string_table)
    functions = {f.id: f for f in profile.function}
    mappings = {m.id: strings[m.filename] for m in profile.mapping}
    locations = {}
    for loc in profile.location:
        assert len(loc.line) == 1, loc
        fn = functions[loc.line[0].function_id]
        locations[loc.id] = Frame(
            function=strings[fn.name],
            file=strings[fn.filename],
            line=loc.line[0].line,
            start_line=fn.start_line,
            mapping=mappings[loc.mapping_id] if loc.mapping_id else None,
        )
    return [(tuple(locations[i] for i in s.location_id), tuple(s.value)) for s in profile.sample]
