"""Finding the allocator a program uses: library names, DT_NEEDED (host/elf.py)."""

from __future__ import annotations

import os

from cowtrace.host.elf import needed_libraries
from cowtrace.kernel.abi import ALLOCATOR_GLIBC, ALLOCATOR_JEMALLOC, ALLOCATOR_TCMALLOC
from cowtrace.kernel.uprobes import allocator_of


def test_allocator_is_told_by_library_name():
    assert allocator_of("/lib/x86_64-linux-gnu/libc.so.6") == ALLOCATOR_GLIBC
    assert allocator_of("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2") == ALLOCATOR_JEMALLOC
    assert allocator_of("/usr/lib/libtcmalloc_minimal.so.4") == ALLOCATOR_TCMALLOC
    assert allocator_of("/usr/lib/x86_64-linux-gnu/libcrypto.so.3") is None
    assert allocator_of("/usr/lib/x86_64-linux-gnu/libcap.so.2") is None


def test_needed_libraries_of_a_dynamic_program():
    found = needed_libraries("/bin/sh")
    assert any(os.path.basename(path) == "libc.so.6" for path in found), found
    assert all(os.path.exists(path) for path in found)


def test_needed_libraries_of_something_that_is_not_elf(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    assert needed_libraries(str(script)) == []
    assert needed_libraries(str(tmp_path / "missing")) == []


def test_needed_libraries_of_a_program_that_exits_meanwhile(monkeypatch):
    """/proc/PID/exe read, then the process exits: following the link fails (ENOENT). That
    raised out of the session ("internal error"); the libraries found stay found."""

    def gone(path, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", path)

    expected = needed_libraries("/bin/sh")
    monkeypatch.setattr(os.path, "realpath", gone)
    assert needed_libraries("/bin/sh") == expected
