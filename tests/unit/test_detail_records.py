"""cowtrace/kernel/abi.py: batches of detail records become one array, stale slots left out.

A CPU's batch (struct fault_batch of bpf/records.h) is reused: past `count`, its slots
still hold the records of an earlier batch.  Only the first `count` of each may come out.
"""

from __future__ import annotations

import numpy as np

from cowtrace.kernel.abi import BATCH_DTYPE, EVENT_DTYPE, FAULT_BATCH, detail_records


def batch(count: int, first_ts: int, stale_ts: int = 999) -> np.void:
    record = np.zeros(1, dtype=BATCH_DTYPE)[0]
    record["count"] = count
    for slot in range(FAULT_BATCH):
        event = record["ev"][slot]
        event["ts"] = first_ts + slot if slot < count else stale_ts
        event["addr"] = 0x1000 * (first_ts + slot)
        event["pid"], event["tid"], event["kind"], event["stack_id"] = 7, 8, 1, 5
    return record


def test_full_and_partial_batches_then_singles() -> None:
    batches = np.array([batch(FAULT_BATCH, 100), batch(3, 200)], dtype=BATCH_DTYPE)
    singles = np.zeros(2, dtype=EVENT_DTYPE)
    singles["ts"] = [50, 60]
    singles["kind"] = 3
    records = detail_records(batches, singles)
    assert records.dtype == EVENT_DTYPE
    assert records["ts"].tolist() == [*range(100, 100 + FAULT_BATCH), 200, 201, 202, 50, 60]
    assert 999 not in records["ts"]
    assert records["addr"][FAULT_BATCH + 2] == 0x1000 * 202
    assert set(records["pid"][: FAULT_BATCH + 3].tolist()) == {7}
    assert records["kind"].tolist() == [1] * (FAULT_BATCH + 3) + [3, 3]
    assert not records["header_len"].any()


def test_no_batches_is_the_singles() -> None:
    singles = np.zeros(1, dtype=EVENT_DTYPE)
    assert detail_records(np.zeros(0, dtype=BATCH_DTYPE), singles) is singles


def test_an_empty_batch_gives_nothing() -> None:
    records = detail_records(np.array([batch(0, 1)], dtype=BATCH_DTYPE), np.zeros(0, EVENT_DTYPE))
    assert len(records) == 0
