"""Parsing of synthetic taskstats netlink messages: no kernel, no root needed.

Why synthetic: the parser reads fields by byte offset from a struct that the running kernel
makes longer with every version, so the tests build records of several sizes by hand and
check that each field lands where the header says it is.
"""

from __future__ import annotations

import errno
import struct

import pytest

from cowtrace import taskstats as ts

FAMILY = 31


def make_struct(
    size: int = 560,
    version: int = 16,
    pid: int = 1234,
    tgid: int = 1200,
    comm: bytes = b"cw:child",
    wpcopy: int = 4100,
    wpdelay: int = 9_876_543,
) -> bytes:
    """A struct taskstats of ``size`` bytes with known values at the header's offsets."""
    buf = bytearray(size)
    struct.pack_into("=H", buf, ts.OFF_VERSION, version)
    struct.pack_into("=I", buf, ts.OFF_EXITCODE, 0)
    struct.pack_into("=Q", buf, ts.OFF_CPU_COUNT, 7)
    struct.pack_into("=Q", buf, ts.OFF_CPU_DELAY_TOTAL, 12345)
    struct.pack_into("=Q", buf, ts.OFF_CPU_RUN_REAL_TOTAL, 8_000_000)
    buf[ts.OFF_COMM : ts.OFF_COMM + len(comm)] = comm
    struct.pack_into("=I", buf, ts.OFF_UID, 0)
    struct.pack_into("=I", buf, ts.OFF_PID, pid)
    struct.pack_into("=I", buf, ts.OFF_PPID, 99)
    struct.pack_into("=Q", buf, ts.OFF_MINFLT, 1232)
    if size >= ts.OFF_TGID + 4:
        struct.pack_into("=I", buf, ts.OFF_TGID, tgid)
    if size >= ts.SIZE_V13:
        struct.pack_into("=Q", buf, ts.OFF_WPCOPY_COUNT, wpcopy)
        struct.pack_into("=Q", buf, ts.OFF_WPCOPY_DELAY_TOTAL, wpdelay)
    return bytes(buf)


def nested(attr_type: int, ident_type: int, ident: int, stats: bytes) -> bytes:
    """An AGGR_PID/AGGR_TGID attribute, flagged NLA_F_NESTED as the kernel sends it."""
    inner = ts.pack_attr(ident_type, struct.pack("=I", ident)) + ts.pack_attr(
        ts.TASKSTATS_TYPE_STATS, stats
    )
    return ts.pack_attr(attr_type | 0x8000, inner)


def message(attrs: bytes, msg_type: int = FAMILY, cmd: int = ts.TASKSTATS_CMD_NEW, seq: int = 0):
    """A whole netlink datagram carrying one generic netlink message."""
    return ts.pack_genl_request(msg_type, cmd, attrs, seq)


def error_message(err: int, seq: int = 5) -> bytes:
    payload = struct.pack("=i", -err) + b"\0" * 16
    hdr = struct.pack("=IHHII", 16 + len(payload), ts.NLMSG_ERROR, 0, seq, 0)
    return hdr + payload


def test_offsets_match_the_header_table() -> None:
    # The numbers the C offsetof() program printed against <linux/taskstats.h> (v13).
    assert ts.OFF_COMM == 80
    assert ts.OFF_PID == 128
    assert ts.OFF_TGID == 368
    assert ts.OFF_WPCOPY_COUNT == 400
    assert ts.OFF_WPCOPY_DELAY_TOTAL == 408
    assert ts.SIZE_V13 == 416


def test_parse_pid_record_from_a_newer_kernel() -> None:
    data = message(nested(ts.TASKSTATS_TYPE_AGGR_PID, ts.TASKSTATS_TYPE_PID, 1234, make_struct()))
    (msg,) = ts.split_messages(data)
    (rec,) = ts.parse_stats_message(msg)
    assert rec.pid == 1234
    assert not rec.aggregate
    assert rec.version == 16
    assert rec.comm == "cw:child"
    assert rec.tgid == 1200
    assert rec.ppid == 99
    assert rec.wpcopy_count == 4100
    assert rec.wpcopy_delay_total_ns == 9_876_543
    assert rec.cpu_count == 7
    assert rec.cpu_delay_total_ns == 12345
    assert rec.minflt == 1232
    assert rec.size == 560
    assert rec.exited_normally


def test_exit_event_with_pid_and_tgid_records() -> None:
    attrs = nested(
        ts.TASKSTATS_TYPE_AGGR_PID, ts.TASKSTATS_TYPE_PID, 501, make_struct(pid=501)
    ) + nested(ts.TASKSTATS_TYPE_AGGR_TGID, ts.TASKSTATS_TYPE_TGID, 500, make_struct(pid=0))
    recs = ts.parse_stats_message(ts.split_messages(message(attrs))[0])
    assert [(r.pid, r.aggregate) for r in recs] == [(501, False), (500, True)]


def test_old_struct_without_wpcopy_or_tgid() -> None:
    rec13 = ts.parse_taskstats(make_struct(size=ts.SIZE_V13, version=13), 7)
    assert rec13.wpcopy_count == 4100
    rec11 = ts.parse_taskstats(make_struct(size=352, version=11), 7)
    assert rec11.wpcopy_count is None
    assert rec11.wpcopy_delay_total_ns is None
    assert rec11.tgid is None


def test_too_short_struct_is_an_error() -> None:
    with pytest.raises(ts.TaskstatsError):
        ts.parse_taskstats(b"\0" * 40, 1)


def test_comm_is_cut_at_the_first_nul() -> None:
    rec = ts.parse_taskstats(make_struct(comm=b"python3\0garbage"), 1)
    assert rec.comm == "python3"


def test_netlink_error_carries_errno() -> None:
    (msg,) = ts.split_messages(error_message(errno.ESRCH))
    with pytest.raises(ts.TaskstatsError) as info:
        ts.parse_stats_message(msg)
    assert info.value.errno == errno.ESRCH


def test_ack_is_not_an_error() -> None:
    (msg,) = ts.split_messages(error_message(0))
    ts.check_error(msg)  # no exception


def test_family_id_from_ctrl_answer() -> None:
    attrs = ts.pack_attr(ts.CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0") + ts.pack_attr(
        ts.CTRL_ATTR_FAMILY_ID, struct.pack("=H", FAMILY)
    )
    data = message(attrs, msg_type=ts.GENL_ID_CTRL, cmd=1)
    assert ts.parse_family_id(ts.split_messages(data)[0]) == FAMILY


def test_family_answer_without_id_is_an_error() -> None:
    data = message(ts.pack_attr(ts.CTRL_ATTR_FAMILY_NAME, b"X\0"), msg_type=ts.GENL_ID_CTRL)
    with pytest.raises(ts.TaskstatsError):
        ts.parse_family_id(ts.split_messages(data)[0])


def test_request_layout() -> None:
    attr = ts.pack_attr(ts.TASKSTATS_CMD_ATTR_PID, struct.pack("=I", 42))
    data = ts.pack_genl_request(FAMILY, ts.TASKSTATS_CMD_GET, attr, seq=9)
    length, msg_type, flags, seq, port = struct.unpack_from("=IHHII", data)
    assert (length, msg_type, flags, seq, port) == (len(data), FAMILY, ts.NLM_F_REQUEST, 9, 0)
    assert struct.unpack_from("=BBH", data, 16) == (ts.TASKSTATS_CMD_GET, 1, 0)
    assert ts.parse_attrs(data[20:]) == [(ts.TASKSTATS_CMD_ATTR_PID, struct.pack("=I", 42))]


def test_attribute_padding_and_string_mask() -> None:
    # A cpumask string of odd length is padded to 4 bytes; the payload keeps its NUL.
    attr = ts.pack_attr(ts.TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, b"0-1\0")
    assert len(attr) == 8
    attr = ts.pack_attr(ts.TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, b"0-15\0")
    assert len(attr) == 12
    assert ts.parse_attrs(attr) == [(ts.TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, b"0-15\0")]


def test_several_messages_in_one_datagram() -> None:
    one = message(nested(ts.TASKSTATS_TYPE_AGGR_PID, ts.TASKSTATS_TYPE_PID, 1, make_struct()))
    two = message(nested(ts.TASKSTATS_TYPE_AGGR_PID, ts.TASKSTATS_TYPE_PID, 2, make_struct()))
    msgs = ts.split_messages(one + two)
    assert [ts.parse_stats_message(m)[0].pid for m in msgs] == [1, 2]


def test_malformed_attribute_is_an_error() -> None:
    with pytest.raises(ts.TaskstatsError):
        ts.parse_attrs(struct.pack("=HH", 200, 1) + b"\0" * 8)


def test_exit_listener_files_records_without_a_socket() -> None:
    listener = ts.ExitListener(cpumask="0")
    listener._family = FAMILY
    attrs = nested(
        ts.TASKSTATS_TYPE_AGGR_PID, ts.TASKSTATS_TYPE_PID, 501, make_struct(wpcopy=3)
    ) + nested(ts.TASKSTATS_TYPE_AGGR_TGID, ts.TASKSTATS_TYPE_TGID, 500, make_struct(wpcopy=9))
    listener._handle(ts.split_messages(message(attrs))[0])
    # A message of another family (here: a stray control answer) is ignored.
    listener._handle(ts.split_messages(message(b"", msg_type=ts.GENL_ID_CTRL))[0])
    assert listener.records[501].wpcopy_count == 3
    assert listener.group_records[500].wpcopy_count == 9
    assert listener.wait_for(501, timeout=0.01) is not None
    assert listener.wait_for(777, timeout=0.01) is None
