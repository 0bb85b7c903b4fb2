"""Parsing of taskstats netlink messages: synthetic ones, and one recorded from a kernel.

Why synthetic: the parser reads fields by byte offset from a struct whose layout changes
with its version (appended to, and in version 15 inserted into), so the tests build records
of every layout by hand, at offsets written here independently of the module's layout code,
and check that each field is read where that version puts it. The recorded reply (see
tests/fixtures/record_taskstats.py) is a real kernel's answer, checked against /proc.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cowtrace.errors import CowtraceError
from cowtrace.host import taskstats as ts

FAMILY = 31

# Byte offsets written out by hand per version (from the kernel header's history, see the
# module docstring), independently of taskstats.layout(): version 15 moved every field after
# cpu_delay_total by 16 bytes per inserted max/min pair before it.
_V13 = {
    "exitcode": 4,
    "cpu_count": 16,
    "cpu_delay_total": 24,
    "blkio_count": 32,
    "cpu_run_real_total": 64,
    "comm": 80,
    "uid": 120,
    "pid": 128,
    "ppid": 132,
    "minflt": 168,
    "tgid": 368,
    "wpcopy_count": 400,
    "wpcopy_delay_total": 408,
}
_V15 = {
    "exitcode": 4,
    "cpu_count": 16,
    "cpu_delay_total": 24,
    "blkio_count": 48,
    "cpu_run_real_total": 112,
    "comm": 128,
    "uid": 168,
    "pid": 176,
    "ppid": 180,
    "minflt": 216,
    "tgid": 464,
    "wpcopy_count": 496,
    "wpcopy_delay_total": 504,
}
OFFSETS = {13: _V13, 14: _V13, 15: _V15, 16: _V13, 17: _V13}
SIZES = {13: 416, 14: 432, 15: 560, 16: 560, 17: 688}


def make_struct(
    version: int = 16,
    size: int | None = None,
    pid: int = 1234,
    tgid: int = 1200,
    comm: bytes = b"cw:child",
    wpcopy: int = 4100,
    wpdelay: int = 9_876_543,
    fill: int = 0,
) -> bytes:
    """A struct taskstats of ``version`` with known values at that version's offsets.

    ``fill`` is written in every 8-byte word first, so a field read at another
    version's offset finds a wrong, recognisable value rather than a lucky zero."""
    offsets = OFFSETS.get(version, _V13)
    size = size if size is not None else SIZES.get(version, 560)
    buf = bytearray(size)
    for off in range(8, size - 7, 8):
        struct.pack_into("=Q", buf, off, fill)
    struct.pack_into("=H", buf, 0, version)
    struct.pack_into("=I", buf, offsets["exitcode"], 0)
    struct.pack_into("=Q", buf, offsets["cpu_count"], 7)
    struct.pack_into("=Q", buf, offsets["cpu_delay_total"], 12345)
    struct.pack_into("=Q", buf, offsets["blkio_count"], 3)
    struct.pack_into("=Q", buf, offsets["cpu_run_real_total"], 8_000_000)
    buf[offsets["comm"] : offsets["comm"] + 32] = comm.ljust(32, b"\0")[:32]
    struct.pack_into("=I", buf, offsets["uid"], 0)
    struct.pack_into("=I", buf, offsets["pid"], pid)
    struct.pack_into("=I", buf, offsets["ppid"], 99)
    struct.pack_into("=Q", buf, offsets["minflt"], 1232)
    if size >= offsets["tgid"] + 4:
        struct.pack_into("=I", buf, offsets["tgid"], tgid)
    if size >= offsets["wpcopy_delay_total"] + 8:
        struct.pack_into("=Q", buf, offsets["wpcopy_count"], wpcopy)
        struct.pack_into("=Q", buf, offsets["wpcopy_delay_total"], wpdelay)
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


def test_layouts_match_the_hand_written_offsets() -> None:
    names = {
        "exitcode": "ac_exitcode",
        "comm": "ac_comm",
        "uid": "ac_uid",
        "pid": "ac_pid",
        "ppid": "ac_ppid",
        "minflt": "ac_minflt",
        "tgid": "ac_tgid",
    }
    for version, offsets in OFFSETS.items():
        lay = ts.layout(version)
        assert lay.size == SIZES[version], version
        for key, off in offsets.items():
            assert lay.fields[names.get(key, key)][0] == off, (version, key)
    # The pairs version 16 moved to the end, and version 17's timestamps after them.
    assert ts.layout(16).fields["cpu_delay_max"][0] == 432
    assert ts.layout(16).fields["irq_delay_min"][0] == 552
    assert ts.layout(15).fields["irq_delay_min"][0] == 552
    assert ts.layout(17).fields["cpu_delay_max_ts"][0] == 560
    assert "cpu_delay_max" not in ts.layout(14).fields


HEADER = Path("/usr/include/linux/taskstats.h")


@pytest.mark.skipif(not HEADER.exists() or shutil.which("cc") is None, reason="no header or cc")
def test_layout_of_the_installed_header_matches_offsetof(tmp_path: Path) -> None:
    """The C compiler's own offsetof() for every field of the header's version."""
    version = int(re.search(r"#define TASKSTATS_VERSION\s+(\d+)", HEADER.read_text())[1])
    lay = ts.layout(version)
    lines = [f'printf("{name} %zu\\n", offsetof(struct taskstats, {name}));' for name in lay.fields]
    source = tmp_path / "offsets.c"
    source.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/taskstats.h>\n"
        "int main(void) {\n"
        + "\n".join(lines)
        + '\nprintf("sizeof %zu\\n", sizeof(struct taskstats));\nreturn 0;\n}\n'
    )
    binary = tmp_path / "offsets"
    subprocess.run(["cc", "-o", str(binary), str(source)], check=True)
    printed = dict(
        line.split() for line in subprocess.check_output([str(binary)], text=True).splitlines()
    )
    assert int(printed.pop("sizeof")) == lay.size
    assert {name: int(off) for name, off in printed.items()} == {
        name: off for name, (off, _fmt) in lay.fields.items()
    }


@pytest.mark.parametrize("version", [13, 14, 15, 16, 17])
def test_each_version_is_read_at_its_own_offsets(version: int) -> None:
    rec = ts.parse_taskstats(make_struct(version, fill=777), 1234)
    assert rec.version == version
    assert rec.size == SIZES[version]
    assert rec.comm == "cw:child"
    assert (rec.tgid, rec.ppid, rec.uid, rec.exitcode) == (1200, 99, 0, 0)
    assert (rec.cpu_count, rec.cpu_delay_total_ns, rec.blkio_count) == (7, 12345, 3)
    assert rec.cpu_run_real_total_ns == 8_000_000
    assert rec.minflt == 1232
    assert rec.wpcopy_count == 4100
    assert rec.wpcopy_delay_total_ns == 9_876_543


def test_version_15_read_as_16_would_be_wrong() -> None:
    """Why the version is checked: the same bytes read at version 16's offsets give garbage."""
    v15 = bytearray(make_struct(15, fill=777))
    struct.pack_into("=H", v15, 0, 16)
    assert ts.parse_taskstats(bytes(v15), 1).wpcopy_count != 4100


@pytest.mark.parametrize("version", [0, 18, 0xFFFF])
def test_unknown_version_is_refused_in_one_line(version: int) -> None:
    with pytest.raises(ts.TaskstatsVersionError) as info:
        ts.parse_taskstats(struct.pack("=H", version) + bytes(900), 1)
    assert isinstance(info.value, CowtraceError)
    assert f"version {version}" in str(info.value)
    assert "\n" not in str(info.value)


def test_record_shorter_than_its_version_is_an_error() -> None:
    with pytest.raises(ts.TaskstatsError, match="shorter"):
        ts.parse_taskstats(make_struct(16, size=416), 1)


RECORDED = sorted((Path(__file__).parents[1] / "fixtures" / "taskstats").glob("reply-*.json"))


@pytest.mark.parametrize("path", RECORDED, ids=[p.name for p in RECORDED])
def test_recorded_reply_from_a_real_kernel(path: Path) -> None:
    """A stopped child's reply, byte for byte, agrees with what /proc said at the same moment."""
    fixture = json.loads(path.read_text())
    (msg,) = ts.split_messages(bytes.fromhex(fixture["reply_hex"]))
    (rec,) = ts.parse_stats_message(msg)
    proc = fixture["proc"]
    assert (rec.pid, rec.aggregate, rec.tgid) == (fixture["pid"], False, fixture["pid"])
    assert rec.comm == proc["comm"]
    assert (rec.ppid, rec.uid) == (proc["ppid"], proc["uid"])
    assert (rec.minflt, rec.majflt) == (proc["minflt"], proc["majflt"])
    assert (rec.cpu_count, rec.cpu_delay_total_ns) == (
        proc["cpu_count"],
        proc["cpu_delay_total_ns"],
    )
    assert rec.size == ts.layout(rec.version).size
    # The child copied each page it wrote; the rest are the interpreter's own pages.
    assert fixture["pages_written"] <= rec.wpcopy_count < fixture["pages_written"] + 250


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
    rec13 = ts.parse_taskstats(make_struct(13), 7)
    assert rec13.wpcopy_count == 4100
    rec11 = ts.parse_taskstats(make_struct(11, size=368), 7)
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
