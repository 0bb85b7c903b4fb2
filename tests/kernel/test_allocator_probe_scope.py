"""Allocator uprobes are installed in members only (issue 12): nothing else on the host traps.

probe_scope.c makes COUNT malloc(SIZE) + free calls in three processes: an outsider started
beside cowtrace, the member `cowtrace run` starts, and that member's forked child.  A uprobe is
an int3 written into the process' copy of the probed instruction, so the proof is read from
each process' memory (/proc/PID/mem) at every probe site cowtrace uses in libc:
  - the member holds the breakpoints, and every call it made is recorded, exactly;
  - the outsider never holds one (so it cannot trap), before or after its calls, and nothing
    of it is recorded;
  - the forked child inherited the breakpoint bytes with its copy of the page; the kernel
    removed them at its first call (the child is not in the probes' filter): malloc's and
    free's sites are clean in the child after its calls, still armed in the member, and none
    of the child's calls is recorded (forked children are not probed: kernel/uprobes.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from cowtrace.commands.common import OutputOptions
from cowtrace.commands.run import run
from cowtrace.kernel.abi import ALLOC_OP_ALLOC, ALLOC_OP_FREE, ALLOCATOR_GLIBC
from cowtrace.kernel.uprobes import resolve_object
from cowtrace.session import SessionOptions
from tests.e2e import wait_until
from tests.kernel.test_attribution_records import RecordingSink

SOURCE = Path(__file__).with_name("probe_scope.c")
COUNT, SIZE = 3000, 1357
INT3 = 0xCC


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe_scope") / "probe_scope"
    cc = shutil.which("gcc") or "cc"
    subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SOURCE)], check=True
    )
    return out


def _libc_of(pid: int) -> tuple[str, list[tuple[int, int, int]]]:
    """The libc `pid` maps (its path) and its mappings (start, end, file offset)."""
    path, spans = "", []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) == 6 and os.path.basename(fields[5]) == "libc.so.6":
                path = fields[5]
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                spans.append((lo, hi, int(fields[2], 16)))
    return path, spans


def probe_sites(libc: str) -> dict[str, int]:
    """Function -> file offset of the instruction cowtrace probes (as uprobes.py picks it)."""
    from bcc import BPF

    found = resolve_object(libc, ALLOCATOR_GLIBC)
    assert found is not None
    return {
        function: BPF._check_path_symbol(libc.encode(), b"", vaddr + offset, -1)[1]
        for function, vaddr, offset in zip(
            found.functions, found.addresses, found.offsets, strict=True
        )
    }


def site_bytes(pid: int, sites: dict[str, int]) -> dict[str, int]:
    """The byte at each probe site in `pid`'s memory."""
    _path, spans = _libc_of(pid)
    out = {}
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for function, offset in sites.items():
            (addr,) = [lo + offset - off for lo, hi, off in spans if off <= offset < off + hi - lo]
            mem.seek(addr)
            out[function] = mem.read(1)[0]
    return out


def _wait_line(path: Path, key: str, timeout: float = 180.0) -> int:
    """The value of the first `key` line `path` has (complete lines only), waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines(keepends=True):
                if not line.endswith("\n"):
                    break
                item = json.loads(line)
                if key in item:
                    return int(item[key])
        time.sleep(0.01)
    raise AssertionError(f"no {key!r} line in {path}")


def load_bias(pid: int, path: Path) -> int:
    """What `pid` added to `path`'s addresses when it mapped it (its mapping of file offset 0
    less the lowest loaded address: 0 for a fixed-address program)."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) == 6 and fields[5] == os.path.realpath(path) and int(fields[2], 16) == 0:
                start = int(fields[0].split("-")[0], 16)
                break
        else:
            raise AssertionError(f"{path} is not mapped in {pid}")
    with open(path, "rb") as image:
        loads = [s["p_vaddr"] for s in ELFFile(image).iter_segments() if s["p_type"] == "PT_LOAD"]
    return start - (min(loads) & ~0xFFF)


def function_span(path: Path, name: str, bias: int) -> range:
    """The addresses of function `name` of `path` in a process that loaded it at `bias`, from
    the file's own symbol table (the tracer's symbolizer is not what this test checks, and a
    process gone before a lagging tracer read its maps leaves it nothing to name)."""
    with open(path, "rb") as image:
        (symbol,) = ELFFile(image).get_section_by_name(".symtab").get_symbol_by_name(name)
    start = bias + symbol["st_value"]
    return range(start, start + symbol["st_size"])


def foreign_breakpoints() -> bool:
    """Whether a process no tracer knows of already holds breakpoints at these sites: another
    tool (or an older cowtrace) probes libc for every process, and the outsider's bytes then
    prove nothing about this cowtrace."""
    probe = subprocess.Popen(["sleep", "30"])
    try:
        # sleep(1) sleeping: the loader has mapped all of libc (x86-64 nanosleep, clock_nanosleep)
        wait_until(
            lambda: Path(f"/proc/{probe.pid}/syscall").read_text().split()[:1] in (["35"], ["230"]),
            60,
            "sleep(1) reaches its sleep",
        )
        libc, _ = _libc_of(probe.pid)
        return INT3 in site_bytes(probe.pid, probe_sites(os.path.realpath(libc))).values()
    finally:
        probe.kill()
        probe.wait()


def test_uprobes_are_installed_in_members_only(binary, tmp_path):
    if foreign_breakpoints():
        pytest.skip("another tracer holds uprobes on libc for every process")
    outsider_out = tmp_path / "outsider.jsonl"
    member_out = tmp_path / "member.jsonl"
    with open(outsider_out, "w") as out:
        outsider = subprocess.Popen(
            [str(binary), "outsider", str(COUNT), str(SIZE), str(tmp_path)], stdout=out
        )
    seen: dict[str, object] = {}
    errors: list[BaseException] = []

    def observe() -> None:
        try:
            outsider_pid = _wait_line(outsider_out, "ready")
            member = _wait_line(member_out, "ready")
            libc, _ = _libc_of(outsider_pid)
            assert _libc_of(member)[0] == libc
            sites = seen["sites"] = probe_sites(os.path.realpath(libc))
            with open(libc, "rb") as image:
                data = image.read()
            seen["file"] = {f: data[offset] for f, offset in sites.items()}
            seen["member_before"] = site_bytes(member, sites)
            seen["bias"] = load_bias(member, binary)
            seen["outsider_before"] = site_bytes(outsider_pid, sites)
            (tmp_path / "go").touch()
            _wait_line(outsider_out, "done")
            seen["outsider_after"] = site_bytes(outsider_pid, sites)
            child = seen["child"] = _wait_line(member_out, "child")
            seen["child_after"] = site_bytes(child, sites)
            seen["member_after"] = site_bytes(member, sites)
            seen["member"] = member
            seen["outsider"] = outsider_pid
        except BaseException as error:  # reported by the test thread below
            errors.append(error)
        finally:
            (tmp_path / "go").touch()
            (tmp_path / "exit").touch()

    sinks: list[RecordingSink] = []

    def factory(resolver, _options):
        sinks.append(RecordingSink(resolver))
        return sinks[-1]

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    saved = os.dup(1)
    try:
        with open(member_out, "w") as target:
            os.dup2(target.fileno(), 1)
        status = run(
            [str(binary), "member", str(COUNT), str(SIZE), str(tmp_path)],
            OutputOptions(quiet=True),
            SessionOptions(malloc=True, sink_factory=factory),
        )
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        (tmp_path / "go").touch()
        (tmp_path / "exit").touch()
        observer.join(timeout=30)
        outsider.wait(timeout=30)
    if errors:
        raise errors[0]
    assert status == 0

    sites = seen["sites"]
    assert {"malloc", "free", "calloc", "realloc"} <= set(sites)
    armed = {function: INT3 for function in sites}
    # The member holds a breakpoint at every site; the outsider holds none, before or after
    # its calls: its text is the file's.
    assert seen["member_before"] == armed
    assert seen["member_after"] == armed
    assert seen["outsider_before"] == seen["file"]
    assert seen["outsider_after"] == seen["file"]
    assert INT3 not in seen["file"].values()
    # The forked child: the sites it called were cleaned by the kernel at its first hit; the
    # others still carry the bytes it inherited.
    child_after = seen["child_after"]
    assert child_after["malloc"] == seen["file"]["malloc"]
    assert child_after["free"] == seen["file"]["free"]

    # Records: the member's calls exactly; none of the outsider's or of the child's.
    sink = sinks[0]
    allocs = np.concatenate(sink.allocs)
    member, outsider_pid, child = seen["member"], seen["outsider"], seen["child"]
    assert not (allocs["pid"] == outsider_pid).any()
    assert not (allocs["pid"] == child).any()
    mine = allocs[allocs["pid"] == member]
    made = mine[(mine["op"] == ALLOC_OP_ALLOC) & (mine["size"] == SIZE)]
    assert len(made) == COUNT
    assert (made["allocator"] == ALLOCATOR_GLIBC).all()
    callers = {int(c) for c in mine["caller"]}
    make_calls = function_span(binary, "make_calls", seen["bias"])
    in_make_calls = {c for c in callers if c in make_calls}
    assert {int(c) for c in made["caller"]} <= in_make_calls
    freed = mine[(mine["op"] == ALLOC_OP_FREE) & np.isin(mine["caller"], list(in_make_calls))]
    assert len(freed) == COUNT
    assert set(freed["addr"].tolist()) == set(made["addr"].tolist())
