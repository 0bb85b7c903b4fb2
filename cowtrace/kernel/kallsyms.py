"""Text ranges of kernel functions, from /proc/kallsyms.

The BPF side recognises a copy-on-write allocation by return addresses that lie inside a few
kernel functions; it needs each function's [start, end) range, which kallsyms gives as the
distance to the next symbol.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from cowtrace.errors import CowtraceError

KALLSYMS = Path("/proc/kallsyms")


@dataclass(frozen=True)
class FunctionRange:
    name: str
    start: int
    end: int

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end


class KernelSymbols:
    """Sorted kernel text symbols, for name → range and address → name look-ups."""

    def __init__(self, text: str) -> None:
        entries: list[tuple[int, str]] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[1] not in "tTwW":
                continue
            entries.append((int(parts[0], 16), parts[2]))
        entries.sort()
        self._addresses = [address for address, _ in entries]
        self._names = [name for _, name in entries]
        self._first_by_name: dict[str, int] = {}
        for index, name in enumerate(self._names):
            self._first_by_name.setdefault(name, index)
        if self._addresses and self._addresses[-1] == 0:
            raise CowtraceError(
                "/proc/kallsyms shows no addresses (kernel.kptr_restrict)",
                hint="sysctl kernel.kptr_restrict=0",
            )

    @classmethod
    def load(cls, path: Path = KALLSYMS) -> KernelSymbols:
        try:
            return cls(path.read_text())
        except OSError as error:
            raise CowtraceError(f"cannot read {path}: {error.strerror}") from error

    def _end_of(self, index: int) -> int:
        start = self._addresses[index]
        next_index = bisect.bisect_right(self._addresses, start)
        if next_index < len(self._addresses):
            return self._addresses[next_index]
        return start + 1

    def function(self, name: str) -> FunctionRange:
        index = self._first_by_name.get(name)
        if index is None:
            raise CowtraceError(f"kernel symbol {name} not found in /proc/kallsyms")
        return FunctionRange(name, self._addresses[index], self._end_of(index))

    def containing(self, address: int) -> FunctionRange | None:
        index = bisect.bisect_right(self._addresses, address) - 1
        if index < 0:
            return None
        found = FunctionRange(self._names[index], self._addresses[index], self._end_of(index))
        return found if address in found else None
