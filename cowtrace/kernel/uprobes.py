"""Uprobes on the allocator(s) the traced processes use: glibc, jemalloc, tcmalloc.

A uprobe belongs to a file (inode), not to a process: once attached to libc.so.6 it fires in
every process that maps libc, now or later, and the BPF side keeps only members' calls.  So the
job here is to find the objects that hold the malloc a member will call, and probe each once:
  - before the program runs (`cowtrace run`): the system's libc, the allocator libraries the
    executable names in DT_NEEDED or LD_PRELOAD, and the executable itself when it defines
    malloc (static programs) or je_malloc (a statically linked, prefixed jemalloc, as upstream
    Redis builds it);
  - when a member execs or is adopted: the same, read from /proc/PID/exe and /proc/PID/maps.
    Calls made between that exec and the probe's arrival (a few milliseconds) are missed.
An allocator loaded later with dlopen() is not seen.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any

from cowtrace.kernel.abi import ALLOCATOR_GLIBC, ALLOCATOR_JEMALLOC, ALLOCATOR_TCMALLOC
from cowtrace.kernel.elfinfo import needed_libraries
from cowtrace.kernel.prologue import emulated_offset

FUNCTIONS = ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign", "free")
# How many argument registers each entry program reads (rdi, rsi, rdx).
ARGUMENTS = {
    "malloc": 1,
    "free": 1,
    "calloc": 2,
    "realloc": 2,
    "aligned_alloc": 2,
    "memalign": 2,
    "posix_memalign": 3,
}
ALLOCATOR_NAMES = {
    ALLOCATOR_GLIBC: "glibc",
    ALLOCATOR_JEMALLOC: "jemalloc",
    ALLOCATOR_TCMALLOC: "tcmalloc",
}
SYSTEM_LIBC = ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
RETURN_PROGRAM = "cowalloc_return"
PROGRAM_PREFIX = "cowalloc_"  # every allocator program's name starts so (tests' leak check)


def allocator_of(path: str) -> int | None:
    """Which allocator a library is, by its file name; None for any other object."""
    name = os.path.basename(path)
    if "jemalloc" in name:
        return ALLOCATOR_JEMALLOC
    if "tcmalloc" in name:
        return ALLOCATOR_TCMALLOC
    if re.fullmatch(r"libc(\.so\.6|-[\d.]+\.so)", name):
        return ALLOCATOR_GLIBC
    return None


@dataclass(frozen=True)
class ProbedObject:
    """One object whose allocator functions carry uprobes."""

    path: str
    allocator: int
    prefix: str  # "" or "je_" (statically linked, prefixed jemalloc)
    functions: tuple[str, ...]
    offsets: tuple[int, ...]  # where each function's probes sit (prologue.py), bytes in

    @property
    def allocator_name(self) -> str:
        return ALLOCATOR_NAMES[self.allocator]


def _probe_offset(path: str, vaddr: int, arguments: int) -> int:
    """The offset into the function at `vaddr` where its probes cost least (prologue.py)."""
    from bcc import BPF

    try:
        _module, file_offset = BPF._check_path_symbol(path.encode(), b"", vaddr, -1)
        with open(path, "rb") as binary:
            binary.seek(file_offset)
            code = binary.read(32)
    except Exception:  # unreadable: keep the probe at the entry
        return 0
    return emulated_offset(code, arguments)


def _defined_functions(path: str, prefix: str) -> dict[str, int]:
    """Allocator functions `path` defines (name without prefix -> address), by bcc's ELF
    reader."""
    from bcc import BPF

    pattern = f"^{prefix}({'|'.join(FUNCTIONS)})$"
    try:
        found = BPF.get_user_functions_and_addresses(path.encode(), pattern.encode())
    except Exception:  # bcc raises a bare Exception on an unreadable object
        return {}
    return {name.decode()[len(prefix) :]: addr for name, addr in found}


class AllocatorProbes:
    """The allocator uprobes of one loaded program; detached by the tracer's detach()."""

    def __init__(self, bpf: Any) -> None:
        self._bpf = bpf
        self._seen: set[tuple[int, int, str]] = set()
        self._checked: set[tuple[int, int]] = set()  # executables already looked into
        self.objects: list[ProbedObject] = []
        self.errors: list[str] = []

    # ---- what to probe ---------------------------------------------------------------------
    def cover_program(self, executable: str, environ: dict[str, str] | None = None) -> None:
        """Probe what a program about to be exec'd will call: libc, its allocator libraries
        (DT_NEEDED, LD_PRELOAD) and the program itself if it carries an allocator."""
        env = os.environ if environ is None else environ
        for libc in SYSTEM_LIBC:
            if os.path.exists(libc):
                self.probe(libc, ALLOCATOR_GLIBC)
                break
        preload = re.split(r"[:\s]+", env.get("LD_PRELOAD", ""))
        for library in [*needed_libraries(executable), *filter(None, preload)]:
            allocator = allocator_of(library)
            if allocator is not None:
                self.probe(library, allocator)
        self._probe_executable(executable)

    def cover_process(self, pid: int) -> None:
        """Probe the allocators a running process maps, its executable's included."""
        exe = f"/proc/{pid}/exe"
        with contextlib.suppress(OSError):
            exe = os.readlink(exe)
        self._probe_executable(f"/proc/{pid}/exe", shown=exe)
        for library in needed_libraries(f"/proc/{pid}/exe"):
            allocator = allocator_of(library)
            if allocator is not None:
                self.probe(library, allocator)
        try:
            with open(f"/proc/{pid}/maps") as maps:
                lines = maps.read().splitlines()
        except OSError:
            return
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "x" in fields[1] and fields[5].startswith("/"):
                allocator = allocator_of(fields[5])
                if allocator is not None:
                    self.probe(f"/proc/{pid}/root{fields[5]}", allocator, shown=fields[5])

    def _probe_executable(self, path: str, shown: str | None = None) -> None:
        """Probe an executable that carries its own allocator; each file is read once."""
        try:
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in self._checked:
            return
        self._checked.add((st.st_dev, st.st_ino))
        if _defined_functions(path, "je_").get("malloc"):
            self.probe(path, ALLOCATOR_JEMALLOC, prefix="je_", shown=shown)
        elif _defined_functions(path, "").get("malloc"):
            self.probe(path, ALLOCATOR_GLIBC, shown=shown)

    # ---- attaching -------------------------------------------------------------------------
    def probe(
        self, path: str, allocator: int, *, prefix: str = "", shown: str | None = None
    ) -> None:
        """Attach entry probes (and return probes) to every allocator function `path` defines;
        once per file and prefix, however many paths lead to it."""
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino, prefix)
        if key in self._seen:
            return
        self._seen.add(key)
        functions = _defined_functions(path, prefix)
        if "malloc" not in functions or "free" not in functions:
            return
        name = ALLOCATOR_NAMES[allocator]
        attached, offsets = [], []
        probed_addresses: set[int] = set()
        for function in FUNCTIONS:
            vaddr = functions.get(function)
            if vaddr is None or vaddr in probed_addresses:
                continue  # aliases (glibc's memalign/aligned_alloc) share one probe
            probed_addresses.add(vaddr)
            # Both probes go to the first cheaply emulated instruction: nothing before it
            # touches the arguments or %rsp, so [sp] is still the return address that the
            # uretprobe hijacks.
            offset = _probe_offset(path, vaddr, ARGUMENTS[function])
            try:
                self._bpf.attach_uprobe(
                    name=path.encode(),
                    addr=vaddr + offset,
                    fn_name=f"{PROGRAM_PREFIX}{name}_{function}".encode(),
                )
                if function != "free":
                    self._bpf.attach_uretprobe(
                        name=path.encode(), addr=vaddr + offset, fn_name=RETURN_PROGRAM.encode()
                    )
            except Exception as error:  # bcc: bare Exception when an attach fails
                self.errors.append(f"{shown or path}:{function}: {error}")
                continue
            attached.append(function)
            offsets.append(offset)
        if attached:
            self.objects.append(
                ProbedObject(shown or path, allocator, prefix, tuple(attached), tuple(offsets))
            )
