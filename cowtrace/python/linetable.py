"""The line of a bytecode offset, from a code object's `co_linetable` (CPython 3.11-3.13).

3.11 replaced the line-number table with the location table of PEP 657 (one format through
3.13, documented in CPython's Objects/locations.md).  It is a run of entries, each covering
one or more code units (inline caches included, so a CACHE entry has its instruction's line):

  first byte  1 CCCC LLL   C: the entry's kind, L + 1: code units covered
  kind 0-9    short form, same line, one more byte (columns)
  kind 10-12  one-line form: line += kind - 10, two more bytes (columns)
  kind 13     no columns: line += svarint
  kind 14     long form: line += svarint, then end line, start and end column (varints)
  kind 15     no location (the line counter is unchanged; the entry's line is None)

Varints are little-endian groups of 6 bits, bit 6 set on all but the last group; a signed one
keeps its sign in bit 0.  The line counter starts at co_firstlineno.  This decodes only the
line, exactly as CPython's PyCode_Addr2Line does (a negative offset, a frame that has not
started its first instruction, is the first line).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

CODE_UNIT = 2  # bytes in one _Py_CODEUNIT
_NO_COLUMNS, _LONG, _NONE = 13, 14, 15


def _varint(table: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = table[pos]
        pos += 1
        value |= (byte & 63) << shift
        shift += 6
        if not byte & 64:
            return value, pos


def _svarint(table: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(table, pos)
    return (-(value >> 1) if value & 1 else value >> 1), pos


def line_ranges(table: bytes, firstlineno: int) -> list[tuple[int, int, int | None]]:
    """(start, end, line) byte ranges of the bytecode, as `code.co_lines()` yields them but
    without merging neighbours of the same line.  Raises ValueError on a malformed table."""
    ranges: list[tuple[int, int, int | None]] = []
    line = firstlineno
    pos = addr = 0
    try:
        while pos < len(table):
            first = table[pos]
            if not first & 0x80:
                raise ValueError(f"location entry at byte {pos} has no start bit")
            kind, units = (first >> 3) & 15, (first & 7) + 1
            pos += 1
            if kind in (_NO_COLUMNS, _LONG):
                delta, pos = _svarint(table, pos)
                line += delta
            elif kind >= 10 and kind != _NONE:
                line += kind - 10
            # Skip the rest of the entry (columns, end line): up to the next start bit.
            while pos < len(table) and not table[pos] & 0x80:
                pos += 1
            end = addr + units * CODE_UNIT
            ranges.append((addr, end, None if kind == _NONE else line))
            addr = end
    except IndexError:
        raise ValueError("location table ends inside an entry") from None
    return ranges


@dataclass(frozen=True)
class LineTable:
    """One code object's lines, looked up by byte offset into its bytecode."""

    firstlineno: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    lines: tuple[int | None, ...]

    @classmethod
    def parse(cls, table: bytes, firstlineno: int) -> LineTable:
        ranges = line_ranges(table, firstlineno)
        return cls(
            firstlineno,
            tuple(r[0] for r in ranges),
            tuple(r[1] for r in ranges),
            tuple(r[2] for r in ranges),
        )

    def line_at(self, offset: int) -> int | None:
        """The line of the instruction at byte `offset` (PyCode_Addr2Line): the first line for
        a negative offset; None for an instruction without a line, or an offset past the
        bytecode (a garbage instruction pointer)."""
        if offset < 0:
            return self.firstlineno
        index = bisect_right(self.starts, offset) - 1
        if index < 0 or offset >= self.ends[index]:
            return None
        return self.lines[index]
