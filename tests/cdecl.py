"""Reads the enums, #defines and structs of the BPF C sources, and lays the structs out the way
clang does for BPF (natural alignment), so a test can hold them against cowtrace's numpy dtypes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SCALARS = {
    "u8": 1,
    "s8": 1,
    "char": 1,
    "__u8": 1,
    "bool": 1,
    "u16": 2,
    "s16": 2,
    "__u16": 2,
    "u32": 4,
    "s32": 4,
    "int": 4,
    "__u32": 4,
    "__s32": 4,
    "u64": 8,
    "s64": 8,
    "__u64": 8,
    "__s64": 8,
}
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#define\s+(\w+)\s+\(?\s*(\d+|0x[0-9a-fA-F]+)U?L*L*\s*\)?\s*$", re.M)
_ENUM = re.compile(r"\benum\s+\w+\s*\{(.*?)\}\s*;", re.S)
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_FIELD = re.compile(r"^(struct\s+\w+|\w+)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?$")


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class CStruct:
    name: str
    fields: tuple[Field, ...]
    size: int
    align: int


class CSource:
    """Constants and struct layouts of one or more C files (#include-free: pass every file)."""

    def __init__(self, *paths: Path) -> None:
        self._read("\n".join(Path(p).read_text() for p in paths))

    @classmethod
    def from_text(cls, text: str) -> CSource:
        source = cls.__new__(cls)
        source._read(text)
        return source

    def _read(self, text: str) -> None:
        text = _COMMENT.sub(" ", text)
        self.constants: dict[str, int] = {}
        for name, value in _DEFINE.findall(text):
            self.constants.setdefault(name, int(value, 0))
        for body in _ENUM.findall(text):
            following = 0
            for item in filter(None, (part.strip() for part in body.split(","))):
                name, _, value = (s.strip() for s in item.partition("="))
                following = self._value(value) if value else following
                self.constants[name] = following
                following += 1
        self.structs: dict[str, CStruct] = {}
        for name, body in _STRUCT.findall(text):
            self.structs[name] = self._layout(name, body)

    def _value(self, token: str) -> int:
        return int(token, 0) if token[0].isdigit() else self.constants[token]

    def _layout(self, name: str, body: str) -> CStruct:
        offset, align, fields = 0, 1, []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            match = _FIELD.match(" ".join(decl.split()))
            if match is None:
                raise ValueError(f"struct {name}: cannot read {decl!r}")
            ctype, field, count = match.groups()
            if ctype.startswith("struct "):
                inner = self.structs[ctype.split()[1]]
                unit, unit_align = inner.size, inner.align
            else:
                unit = unit_align = SCALARS[ctype]
            offset = -(-offset // unit_align) * unit_align
            size = unit * (self._value(count) if count else 1)
            fields.append(Field(field, offset, size))
            offset += size
            align = max(align, unit_align)
        return CStruct(name, tuple(fields), -(-offset // align) * align, align)
