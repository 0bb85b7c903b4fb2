"""Bulk reader of the BPF ring buffers whose records all have one size.

Every record in such a ring has the same size (an 8-byte ring header and one struct of
bpf/cowtrace.bpf.c: a batch of detail records, a single one, a map change, an allocator call),
so a whole stretch of the ring is one numpy structured array: user space pays per drain, not
per event.  (bcc's own consumer calls a Python function per record, which took a whole core
and slowed the traced program 4x in the prototype.)

Layout of a BPF ring buffer map as mmap(2) exposes it (kernel/bpf/ringbuf.c): page 0 holds
the consumer position (writable by us); page 1 the producer position; from page 2 the data
area, mapped twice in a row so that a record that wraps around reads contiguously.  Positions
count bytes forever; a record header is a u32 length whose bit 31 says "still being written"
and bit 30 "discarded", then a u32 page offset.
"""

from __future__ import annotations

import mmap
import struct

import numpy as np

from cowtrace.kernel.abi import EVENT_DTYPE

RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30

EVENT_PAYLOAD = EVENT_DTYPE.itemsize - 8
RECORD_SIZE = EVENT_DTYPE.itemsize  # 48: 8-byte header + 40-byte payload, already 8-aligned

_U64 = struct.Struct("<Q")


class FixedRecordRing:
    """Consumer of a BPF ring buffer whose records all have one dtype (see records.py)."""

    def __init__(self, map_fd: int, data_size: int, dtype: np.dtype = EVENT_DTYPE) -> None:
        page = mmap.PAGESIZE
        self._dtype = dtype
        self._record_size = dtype.itemsize
        self._size = data_size
        self._mask = data_size - 1
        self._consumer = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._producer = mmap.mmap(
            map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._producer)[page:]

    def drain(self, limit: int | None = None) -> np.ndarray:
        """Every record written so far (up to `limit`), as a copied structured array."""
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        producer = _U64.unpack_from(self._producer, 0)[0]
        size = self._record_size
        count = (producer - consumer) // size
        if limit is not None:
            count = min(count, limit)
        count = min(count, self._size // size)
        if count <= 0:
            return np.empty(0, dtype=self._dtype)
        start = consumer & self._mask
        records = np.frombuffer(self._data, dtype=self._dtype, count=count, offset=start).copy()
        busy = np.flatnonzero(records["header_len"] & RINGBUF_BUSY_BIT)
        if busy.size:
            records = records[: busy[0]]
        _U64.pack_into(self._consumer, 0, consumer + len(records) * size)
        keep = (records["header_len"] & RINGBUF_DISCARD_BIT) == 0
        return records if keep.all() else records[keep]

    def close(self) -> None:
        self._data.release()
        self._producer.close()
        self._consumer.close()
