"""Run a loaded BPF program once on a chosen CPU (BPF_PROG_TEST_RUN, BPF_F_TEST_RUN_ON_CPU).

The tracer needs it to flush the detail records each CPU gathers (flush_fault_batch in
bpf/cowtrace.bpf.c): the kernel runs the program on that CPU, by IPI from another one, so it
never interleaves with the fault programs there.  bcc has no binding for the command, so this
is the bpf(2) system call through ctypes.
"""

from __future__ import annotations

import ctypes
import os

from cowtrace.errors import CowtraceError

_SYS_BPF = 321  # x86-64
_BPF_PROG_TEST_RUN = 10
_BPF_F_TEST_RUN_ON_CPU = 1

_libc = ctypes.CDLL(None, use_errno=True)


class _TestRunAttr(ctypes.Structure):
    """The `test` member of union bpf_attr (include/uapi/linux/bpf.h), up to `cpu`."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
    ]


def online_cpus() -> list[int]:
    """CPUs the kernel runs now, from /sys/devices/system/cpu/online ("0-3,6")."""
    try:
        with open("/sys/devices/system/cpu/online") as handle:
            text = handle.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def run_on_cpu(prog_fd: int, cpu: int) -> None:
    """Run the raw tracepoint program `prog_fd` once on `cpu`, with no arguments."""
    attr = _TestRunAttr(prog_fd=prog_fd, flags=_BPF_F_TEST_RUN_ON_CPU, cpu=cpu)
    if _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        errno = ctypes.get_errno()
        if errno == 6:  # ENXIO: the CPU went offline; nothing of it to flush
            return
        raise CowtraceError(f"could not run a BPF program on CPU {cpu}: {os.strerror(errno)}")
