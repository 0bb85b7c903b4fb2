"""The fixed-size records the BPF program streams to user space, as numpy dtypes.

Each ring buffer carries one record type, so a stretch of the ring is one structured array
(see ringbuf.py).  Every dtype starts with the ring's 8-byte record header and then mirrors a
struct of bpf/cowtrace.bpf.c field by field; keep the two in step.
"""

from __future__ import annotations

import numpy as np

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
        ("pad_batch", "<u4"),
        ("events", EVENT_PAYLOAD_DTYPE, (FAULT_BATCH,)),
    ]
)


def detail_records(batches: np.ndarray, singles: np.ndarray) -> np.ndarray:
    """The records in use of BATCH_DTYPE `batches`, then EVENT_DTYPE `singles`, as one
    EVENT_DTYPE array (ring headers zeroed)."""
    if not len(batches):
        return singles
    used = np.arange(FAULT_BATCH) < batches["count"][:, None]
    payload = batches["events"][used]
    records = np.zeros(len(payload) + len(singles), dtype=EVENT_DTYPE)
    for name in EVENT_PAYLOAD_DTYPE.names:
        records[name][: len(payload)] = payload[name]
    records[len(payload) :] = singles
    return records


# struct map_event: a change to a member's memory map, as the syscall returned it.
MAP_OP_MMAP, MAP_OP_MUNMAP, MAP_OP_MREMAP, MAP_OP_BRK, MAP_OP_MPROTECT = 1, 2, 3, 4, 5
MAP_EVENT_DTYPE = np.dtype(
    [
        *_RING_HEADER,
        ("ts", "<u8"),
        ("start", "<u8"),  # mmap: returned address; munmap/mprotect: addr; mremap: old; brk: old
        ("length", "<u8"),  # mmap/munmap/mprotect: len; mremap: old_len; brk: 0
        ("new_start", "<u8"),  # mremap: returned address; brk: the new break
        ("new_length", "<u8"),  # mremap: new_len
        ("pgoff", "<u8"),  # mmap: file offset in bytes
        ("pid", "<u4"),  # tgid
        ("fd", "<i4"),  # mmap: fd (-1 for anonymous)
        ("prot", "<u4"),  # mmap/mprotect: PROT_*
        ("flags", "<u4"),  # mmap: MAP_*; mremap: MREMAP_*
        ("op", "u1"),  # MAP_OP_*
        ("pad", "V7"),
    ]
)

PROT_EXEC = 0x4


def processes_mapping_code(records: np.ndarray) -> list[int]:
    """Members that mapped an executable file in these MAP_EVENT_DTYPE records: the loader
    mapping the libraries after an exec, or a dlopen.  What is known of a process' objects
    (symbol caches, allocator probes) must be looked at again while it lives."""
    if not len(records):
        return []
    file_mmap = (records["op"] == MAP_OP_MMAP) & (records["fd"] >= 0)
    code = file_mmap & ((records["prot"] & PROT_EXEC) != 0)
    return np.unique(records["pid"][code]).tolist()


# struct alloc_event: an allocator call that returned (uprobes on malloc & co.).
ALLOC_OP_ALLOC, ALLOC_OP_FREE, ALLOC_OP_REALLOC = 1, 2, 3
ALLOCATOR_GLIBC, ALLOCATOR_JEMALLOC, ALLOCATOR_TCMALLOC = 0, 1, 2
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

for _dtype in (EVENT_DTYPE, MAP_EVENT_DTYPE, ALLOC_EVENT_DTYPE):
    assert _dtype.itemsize % 8 == 0, "ring records are 8-byte aligned"
