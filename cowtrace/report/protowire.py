"""Protocol-buffer wire encoding: the two wire types pprof's profile.proto uses.

Every field of ``perftools.profiles.Profile`` is an integer (varint, wire type 0), a string, a
submessage or a packed list of integers (length-delimited, wire type 2). That is the whole of
what is written here, so `report --format pprof` needs no protobuf runtime, no generated code
and no protoc: the encoding is frozen by the protobuf spec, while the protobuf package's API
for building messages without generated code has changed across its major versions. The
tests decode what this writes with the protobuf package and a descriptor compiled from
profile.proto itself, an independent reader.
"""

from __future__ import annotations

from collections.abc import Iterable

VARINT = 0
LENGTH_DELIMITED = 2
_UINT64 = 1 << 64


def varint(value: int) -> bytes:
    """Base-128, least significant group first; a negative int64 as its 64-bit two's
    complement (ten bytes), as protobuf encodes ``int64``."""
    if value < 0:
        value += _UINT64
    if not 0 <= value < _UINT64:
        raise ValueError(f"{value} does not fit 64 bits")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def integer(field: int, value: int) -> bytes:
    """An int64/uint64/bool field; nothing for 0 (proto3's default is not written)."""
    return tag(field, VARINT) + varint(int(value)) if value else b""


def length_delimited(field: int, payload: bytes) -> bytes:
    """A string, bytes or submessage field; written even when empty (a repeated string such
    as the string table must keep its empty entries)."""
    return tag(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


def string(field: int, text: str) -> bytes:
    return length_delimited(field, text.encode("utf-8"))


def packed(field: int, values: Iterable[int]) -> bytes:
    """A repeated scalar field in packed form (proto3's default); nothing when empty."""
    payload = b"".join(varint(v) for v in values)
    return length_delimited(field, payload) if payload else b""
