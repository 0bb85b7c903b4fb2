"""The kernel/user ABI: every number and record layout the BPF side (bpf/*.h) shares with Python.

Written once, here.  The C side declares the same names (enums, #defines, structs); the unit
test tests/unit/test_abi.py parses bpf/*.c and fails when a constant's value or a record's
fields (names, offsets, sizes) differ between the two, so a field added on one side only is
caught before it silently shifts every field behind it.

Each ring buffer carries one record type, so a stretch of the ring is one structured array
(see ringbuf.py).  The dtypes of rings drained in bulk start with the ring's 8-byte record
header; records handed to a callback one by one (proc_event, py_new_stack) have none.

Decoders (ebpf_exporter's pattern): the *_NAMES tables are the one place a kernel integer
becomes the word the outputs print.
"""

from __future__ import annotations

import ctypes

import numpy as np

# ---- enums and flags (C: the enum of the same name) -------------------------------------------
# enum kind: what a write fault on a write-protected page turned out to be.
KIND_COPY, KIND_REUSE, KIND_ZERO_FILL = 1, 2, 3
# enum source: where a copy's data came from.
SOURCE_ANON, SOURCE_FILE = 0, 1
# enum via: who wrote (the process, the kernel on its behalf, get_user_pages).
VIA_USER, VIA_KERNEL, VIA_GUP = 0, 1, 2
# enum episode: a thread's open write-protect fault.
EP_NONE, EP_WP_FAULT, EP_COPIED, EP_CAPTURING = 0, 1, 2, 3
# enum proc_event_type: lifecycle records; PE_MAPS: a member's memory map changed.
PE_FORK, PE_EXEC, PE_EXIT, PE_FREE, PE_MAPS = 1, 2, 3, 4, 5
# enum member_flags.
MF_VFORK_CHILD, MF_EXITED, MF_AWAIT_EXEC = 1, 2, 4
# enum stat: slots of the per-CPU health counters.
STAT_LOST_EVENTS, STAT_LOST_PROC_EVENTS, STAT_MEMBERS_FULL, STAT_THREADS_FULL = 0, 1, 2, 3
STAT_STACK_ERRORS, STAT_LOST_MAP_EVENTS = 4, 5
STAT_LOST_ALLOC_EVENTS, STAT_ALLOC_STACK_ERRORS = 6, 7
NSTATS = 8
# enum writer_prog: tail-call slots of writer_stack_progs.
WRITER_PROG_USER, WRITER_PROG_KERNEL = 0, 1
# enum py_flags: what the kernel saw of a Python writer.
PYF_GC, PYF_FINALIZING, PYF_TRUNCATED, PYF_GIL_HOLDER = 1, 2, 4, 8
# enum alloc_op, and the allocator ids of the probes (ALLOCATOR_ENTRIES in C).
ALLOC_OP_ALLOC, ALLOC_OP_FREE, ALLOC_OP_REALLOC = 1, 2, 3
ALLOCATOR_GLIBC, ALLOCATOR_JEMALLOC, ALLOCATOR_TCMALLOC = 0, 1, 2

# ---- decoders: kernel integers to the words of the outputs ------------------------------------
KIND_NAMES = {KIND_COPY: "copy", KIND_REUSE: "reuse", KIND_ZERO_FILL: "zero_fill"}
SOURCE_NAMES = {SOURCE_ANON: "anon", SOURCE_FILE: "file"}
VIA_NAMES = {VIA_USER: "user", VIA_KERNEL: "kernel", VIA_GUP: "gup"}
ALLOCATOR_NAMES = {
    ALLOCATOR_GLIBC: "glibc",
    ALLOCATOR_JEMALLOC: "jemalloc",
    ALLOCATOR_TCMALLOC: "tcmalloc",
}

# ---- records ----------------------------------------------------------------------------------
_RING_HEADER = [("header_len", "<u4"), ("header_pgoff", "<u4")]

# struct cow_event: one classified fault (copy, reuse, zero-fill).
_EVENT_FIELDS = [
    ("ts", "<u8"),  # bpf_ktime_get_ns() (CLOCK_MONOTONIC)
    ("addr", "<u8"),  # page-aligned user address; 0 when none (get_user_pages)
    ("pid", "<u4"),  # writer tgid
    ("tid", "<u4"),  # writer thread
    ("stack_id", "<i4"),  # native user stack in the user_stacks map, -1 if none
    ("pystack_id", "<i4"),  # Python stack id, -1 if none
    ("kind", "u1"),  # 1 copy, 2 reuse, 3 zero-fill
    ("source", "u1"),  # 0 anon, 1 file
    ("via", "u1"),  # 0 user, 1 kernel, 2 get_user_pages
    ("pad", "V5"),
]
EVENT_PAYLOAD_DTYPE = np.dtype(_EVENT_FIELDS)
# A record of the fault_singles ring, and what the tracer hands out for every detail record.
EVENT_DTYPE = np.dtype([*_RING_HEADER, *_EVENT_FIELDS])

# struct fault_batch: the fault path's records, FAULT_BATCH at a time (the fault_events ring).
FAULT_BATCH = 16
BATCH_DTYPE = np.dtype(
    [
        *_RING_HEADER,
        ("count", "<u4"),  # records in use, from the start; the rest is stale
        ("pad", "<u4"),
        ("ev", EVENT_PAYLOAD_DTYPE, (FAULT_BATCH,)),
    ]
)


def detail_records(batches: np.ndarray, singles: np.ndarray) -> np.ndarray:
    """The records in use of BATCH_DTYPE `batches`, then EVENT_DTYPE `singles`, as one
    EVENT_DTYPE array (ring headers zeroed)."""
    if not len(batches):
        return singles
    used = np.arange(FAULT_BATCH) < batches["count"][:, None]
    payload = batches["ev"][used]
    records = np.zeros(len(payload) + len(singles), dtype=EVENT_DTYPE)
    for name in EVENT_PAYLOAD_DTYPE.names:
        records[name][: len(payload)] = payload[name]
    records[len(payload) :] = singles
    return records


# struct alloc_event: an allocator call that returned (uprobes on malloc & co.).
ALLOC_EVENT_DTYPE = np.dtype(
    [
        *_RING_HEADER,
        ("ts", "<u8"),
        ("addr", "<u8"),  # the block returned (alloc, realloc) or released (free)
        ("size", "<u8"),  # bytes asked for; 0 for free
        ("old_addr", "<u8"),  # realloc: the block it replaced (0 if none)
        ("caller", "<u8"),  # return address into the allocating function
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("stack_id", "<i4"),  # allocation stack in the user_stacks map, -1 if none
        ("op", "u1"),  # ALLOC_OP_*
        ("allocator", "u1"),  # ALLOCATOR_*
        ("pad", "V2"),
    ]
)

# struct proc_event: a lifecycle record (fork, exec, exit, free, maps), read by a callback.
PROC_EVENT_DTYPE = np.dtype(
    [
        ("ts", "<u8"),
        ("type", "<u4"),  # PE_*
        ("pid", "<u4"),
        ("ppid", "<u4"),
        ("root", "<u4"),
        ("exit_code", "<i4"),  # -1 until known
        ("exit_signal", "<u4"),
        ("comm", "S16"),
    ]
)

# struct py_new_stack: a Python stack seen for the first time, read by a callback.
PY_NEW_STACK_DTYPE = np.dtype([("runtime", "<u8"), ("pid", "<u4"), ("stack_id", "<i4")])

# struct sample of bpf/calibrate.bpf.c: an allocation (kind 1) or a file rss_stat change (kind
# 2) of the calibration process, its stack as unwound and the raw words above ctx (calibrate.py).
CALIBRATION_SAMPLE_DTYPE = np.dtype(
    [
        ("kind", "<u4"),
        ("arg", "<u4"),  # allocation: its order; rss_stat: the counter
        ("gfp", "<u8"),
        ("nframes_bytes", "<i8"),  # bpf_get_stack's return: bytes of `frames` filled
        ("frames", "<u8", (24,)),  # NFRAMES
        ("words", "<u8", (160,)),  # NWORDS
    ]
)

for _dtype in (
    EVENT_DTYPE,
    ALLOC_EVENT_DTYPE,
    PROC_EVENT_DTYPE,
    PY_NEW_STACK_DTYPE,
    CALIBRATION_SAMPLE_DTYPE,
):
    assert _dtype.itemsize % 8 == 0, "ring records are 8-byte aligned"


def ring_record(dtype: np.dtype) -> np.dtype:
    """`dtype` as a ring holds it: the 8-byte ring header first (ringbuf.FixedRecordRing)."""
    return np.dtype([*_RING_HEADER, *[(name, dtype.fields[name][0]) for name in dtype.names]])


def read_record(data: int, dtype: np.dtype) -> np.void:
    """One record of ``dtype`` at the address a ring callback was handed (copied out: the
    ring's memory is reused once the callback returns)."""
    return np.frombuffer(ctypes.string_at(data, dtype.itemsize), dtype=dtype)[0]
