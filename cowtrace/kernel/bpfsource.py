"""Compiling the shipped BPF C programs with bcc.

bcc compiles at start-up against the kernel headers under /lib/modules/$(uname -r)/build.  On
this project's machines those are Debian's 6.1 headers linked in by `cowtrace doctor --fix`:
safe because the programs read no kernel struct, only tracepoint arguments and helper results.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from importlib import resources
from typing import Any

from cowtrace.errors import CowtraceError


def program_text(name: str) -> str:
    """The source of one of the programs shipped in the cowtrace.bpf package.

    pyproject's package-dir maps the top-level bpf/ folder to the package cowtrace.bpf: a wheel
    ships it as cowtrace/bpf/, and a checkout's editable install (`make setup`) maps it to bpf/
    itself, so both are found the same way.  A checkout that was never installed has no such
    package.
    """
    try:
        package = resources.files("cowtrace.bpf")
    except ModuleNotFoundError:
        raise CowtraceError(
            "cowtrace's BPF programs (the package cowtrace.bpf) are not installed",
            hint="make setup, or pip install -e . in the checkout",
        ) from None
    return _with_headers_inlined(package, name, set())


# `#include "name.h"`: a header of bpf/ (system headers use <...> and are left to the compiler).
_LOCAL_INCLUDE = re.compile(r'^#include "([\w.-]+)"[ \t]*$', re.MULTILINE)


def _with_headers_inlined(package: Any, name: str, seen: set[str]) -> str:
    """`name`'s text with each of its local includes replaced by the header's own text (each
    header once).  bcc compiles a text, not a file, and the package may not be a directory
    the compiler could search (-I), so the program is assembled here, as the preprocessor
    would, before it is handed over."""
    text = (package / name).read_text()

    def inline(match: re.Match) -> str:
        header = match.group(1)
        if header in seen:
            return f"/* {header}: included above */"
        seen.add(header)
        body = _with_headers_inlined(package, header, seen)
        return body.replace("#pragma once\n", "", 1)

    return _LOCAL_INCLUDE.sub(inline, text)


@contextlib.contextmanager
def _quiet_stderr():
    """bcc's compiler prints header warnings to fd 2; they mean nothing to our users."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def compile_program(name: str, cflags: list[str]) -> Any:
    """Compile and load one program; attach its TRACEPOINT/RAW_TRACEPOINT probes."""
    try:
        from bcc import BPF
    except ImportError as error:
        raise CowtraceError(
            "the bcc Python module is not importable",
            hint="apt-get install python3-bpfcc, and run cowtrace with /usr/bin/python3",
        ) from error
    text = program_text(name)
    flags = ["-Wno-macro-redefined", "-Wno-unused-function", *cflags]
    try:
        with _quiet_stderr():
            program = BPF(text=text, cflags=flags)
    except Exception as error:  # bcc raises bare Exception on compile or load failure
        raise CowtraceError(
            f"could not load the BPF program {name}: {error}",
            hint="cowtrace doctor",
        ) from error
    _release_compiler_memory()
    return program


def _release_compiler_memory() -> None:
    """Give back to the system the heap clang/LLVM used to compile the program.

    bcc compiles inside this process; glibc keeps the freed memory in its arenas, about 35 MiB
    of resident memory that a tracer left running for days on a production host never uses
    again.  malloc_trim(0) returns it."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)
