"""A minimal taskstats client: the kernel's own per-task copy count, as an independent oracle.

With delay accounting on (``sysctl kernel.task_delayacct=1``) the kernel counts, per task,
every pass through its copy-on-write copy routine (``wpcopy_count``: copies plus zero-fills;
reuses are not counted) and the time spent there. cowtrace's tests compare the tracer's
numbers with these, so this client must not share any code or assumption with the tracer: it
talks generic netlink directly with :mod:`socket` and :mod:`struct` (pyroute2's parser stops
before the wpcopy fields, and is one more dependency).

The struct layout. The kernel sends ``sizeof(struct taskstats)`` of its own version, and
the struct has not always grown at its end: version 15 inserted ``*_delay_max`` /
``*_delay_min`` pairs after each ``*_delay_total``, moving every later field (``wpcopy_count``
from byte 400 to 496), and version 16 moved them to the end again (the running 6.18 kernel
here speaks 16). So a record is decoded by the layout of the version it says it is, never by the
header this code was written against, and a version this module does not know is refused
(:class:`TaskstatsVersionError`) rather than read at guessed offsets. The layouts are computed
once, from the field lists below (:func:`layout`), by the C rules for x86-64 and the other
64-bit ABIs: natural alignment, plus the header's ``__attribute__((aligned(8)))``.

Sources, from ``include/uapi/linux/taskstats.h``: versions up to 13 as in Debian 12's
``/usr/include/linux/taskstats.h`` (a unit test compiles ``offsetof`` against it and compares);
14 appends ``irq_count``/``irq_delay_total`` ("delayacct: track delays from IRQ/SOFTIRQ");
15 is "delayacct: add delay max/min to record delay peak" + "taskstats: modify taskstats
version"; 16 is "taskstats: fix struct taskstats breaks backward compatibility since version
15"; 17 appends one 16-byte timespec per delay maximum ("delay max timestamp record").
Up to version 14 the struct only ever grew at its end, so a version 1 to 12 record is a
prefix of version 14's: a field lies in the record if the record is long enough (``ac_tgid``
since 12, ``wpcopy_*`` since 13).

A few offsets, for the record: ``ac_comm`` 80, ``ac_pid`` 128, ``ac_tgid`` 368,
``wpcopy_count`` 400 (v13, v14, v16, v17) or 496 (v15); sizes 416 (v13), 432 (v14),
560 (v15, v16), 688 (v17).

Records for a thread group (``query_tgid`` and the exit record of a group's last thread)
are aggregates: the kernel fills only the delay-accounting fields and a few counters there,
so their ``ac_*`` fields are zero; :attr:`TaskStats.pid` always comes from the message's own
PID/TGID attribute, never from the struct.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cowtrace.errors import CowtraceError
from cowtrace.switch_users import SharedSwitch

# <linux/netlink.h>, <linux/genetlink.h>
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

# <linux/taskstats.h>
TASKSTATS_GENL_NAME = "TASKSTATS"
TASKSTATS_GENL_VERSION = 1
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_TGID = 2
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
TASKSTATS_TYPE_AGGR_TGID = 5
TASKSTATS_TYPE_NULL = 6
TASKSTATS_CMD_ATTR_PID = 1
TASKSTATS_CMD_ATTR_TGID = 2
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK = 4
TS_COMM_LEN = 32

# struct taskstats, field by field: (name, struct format, alignment). Versions 1 to 14 (every
# field in the order the header declares it; a shorter version is a prefix of this list).
_V14_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("version", "H", 2),
    ("ac_exitcode", "I", 4),
    ("ac_flag", "B", 1),
    ("ac_nice", "B", 1),
    ("cpu_count", "Q", 8),
    ("cpu_delay_total", "Q", 8),
    ("blkio_count", "Q", 8),
    ("blkio_delay_total", "Q", 8),
    ("swapin_count", "Q", 8),
    ("swapin_delay_total", "Q", 8),
    ("cpu_run_real_total", "Q", 8),
    ("cpu_run_virtual_total", "Q", 8),
    ("ac_comm", f"{TS_COMM_LEN}s", 1),
    ("ac_sched", "B", 8),  # __attribute__((aligned(8)))
    ("ac_pad", "3s", 1),
    ("ac_uid", "I", 8),  # __attribute__((aligned(8)))
    ("ac_gid", "I", 4),
    ("ac_pid", "I", 4),
    ("ac_ppid", "I", 4),
    ("ac_btime", "I", 4),
    ("ac_etime", "Q", 8),
    ("ac_utime", "Q", 8),
    ("ac_stime", "Q", 8),
    ("ac_minflt", "Q", 8),
    ("ac_majflt", "Q", 8),
    ("coremem", "Q", 8),
    ("virtmem", "Q", 8),
    ("hiwater_rss", "Q", 8),
    ("hiwater_vm", "Q", 8),
    ("read_char", "Q", 8),
    ("write_char", "Q", 8),
    ("read_syscalls", "Q", 8),
    ("write_syscalls", "Q", 8),
    ("read_bytes", "Q", 8),
    ("write_bytes", "Q", 8),
    ("cancelled_write_bytes", "Q", 8),
    ("nvcsw", "Q", 8),
    ("nivcsw", "Q", 8),
    ("ac_utimescaled", "Q", 8),
    ("ac_stimescaled", "Q", 8),
    ("cpu_scaled_run_real_total", "Q", 8),
    ("freepages_count", "Q", 8),
    ("freepages_delay_total", "Q", 8),
    ("thrashing_count", "Q", 8),
    ("thrashing_delay_total", "Q", 8),
    ("ac_btime64", "Q", 8),  # v10
    ("compact_count", "Q", 8),  # v11
    ("compact_delay_total", "Q", 8),
    ("ac_tgid", "I", 4),  # v12
    ("ac_tgetime", "Q", 8),
    ("ac_exe_dev", "Q", 8),
    ("ac_exe_inode", "Q", 8),
    ("wpcopy_count", "Q", 8),  # v13
    ("wpcopy_delay_total", "Q", 8),
    ("irq_count", "Q", 8),  # v14
    ("irq_delay_total", "Q", 8),
)
# The delays that gained a maximum and a minimum in version 15, in the header's order.
_PEAKED = ("cpu", "blkio", "swapin", "freepages", "thrashing", "compact", "wpcopy", "irq")
# The first field each version appended (versions 1 to 9 are cut like version 9: the fields
# each of them added before are not listed here, and read only if the record holds them).
_FIRST_FIELD_OF = {
    10: "ac_btime64",
    11: "compact_count",
    12: "ac_tgid",
    13: "wpcopy_count",
    14: "irq_count",
}
MIN_VERSION = 1
MAX_VERSION = 17


def _peaks(delay: str) -> tuple[tuple[str, str, int], ...]:
    return ((f"{delay}_delay_max", "Q", 8), (f"{delay}_delay_min", "Q", 8))


def _fields(version: int) -> tuple[tuple[str, str, int], ...]:
    """The fields of ``struct taskstats`` as the kernel of ``version`` declares them."""
    if version == 15:  # each pair right after its *_delay_total
        out: list[tuple[str, str, int]] = []
        for field in _V14_FIELDS:
            out.append(field)
            delay = field[0].removesuffix("_delay_total")
            if field[0].endswith("_delay_total") and delay in _PEAKED:
                out.extend(_peaks(delay))
        return tuple(out)
    fields = _V14_FIELDS
    names = [name for name, _fmt, _align in fields]
    for newer, first in sorted(_FIRST_FIELD_OF.items(), reverse=True):
        if version < newer:
            fields = fields[: names.index(first)]
    if version >= 16:  # the same pairs, at the end
        fields += tuple(f for delay in _PEAKED for f in _peaks(delay))
    if version >= 17:  # one struct __kernel_timespec {s64 sec; long long nsec} per maximum
        fields += tuple((f"{delay}_delay_max_ts", "qq", 8) for delay in _PEAKED)
    return fields


@dataclass(frozen=True)
class Layout:
    """Where each field of one version's ``struct taskstats`` lies: name -> (offset, format)."""

    version: int
    fields: dict[str, tuple[int, str]]
    size: int  # sizeof(struct taskstats) of this version (versions 1 to 9: of version 9 or less)


@functools.cache
def layout(version: int) -> Layout:
    """The layout of ``version``; raises :class:`TaskstatsVersionError` for one not known."""
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise TaskstatsVersionError(version)
    offsets: dict[str, tuple[int, str]] = {}
    off = 0
    for name, fmt, align in _fields(version):
        off = (off + align - 1) // align * align
        offsets[name] = (off, fmt)
        off += struct.calcsize("=" + fmt)
    return Layout(version, offsets, (off + 7) // 8 * 8)


# From this version on the layout above is the whole struct: a shorter record is malformed.
EXACT_SIZE_SINCE = 10

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLATTR = struct.Struct("=HH")  # len, type
_NLMSGERR = struct.Struct("=i")  # error, followed by the offending header

DELAYACCT_SYSCTL = Path("/proc/sys/kernel/task_delayacct")


class TaskstatsError(CowtraceError):
    """The kernel refused a taskstats request, or said something we cannot parse."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class TaskstatsVersionError(TaskstatsError):
    """A ``struct taskstats`` of a version whose layout this module does not know."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"the kernel's struct taskstats is version {version}, which cowtrace cannot read "
            f"(it knows versions {MIN_VERSION} to {MAX_VERSION}): refusing to guess its "
            "delay-accounting figures"
        )
        self.version = version


@dataclass(frozen=True)
class TaskStats:
    """One ``struct taskstats`` record, reduced to what cowtrace checks.

    ``pid`` is the task (thread) id, or the thread-group id when ``aggregate`` is true (a
    TGID record sums the delay counts of all the group's threads, living and dead).
    ``wpcopy_count`` / ``wpcopy_delay_total_ns`` are ``None`` when the kernel's struct is
    older than version 13, ``tgid`` when older than version 12.
    """

    pid: int
    aggregate: bool
    version: int
    comm: str
    tgid: int | None
    ppid: int
    uid: int
    exitcode: int
    cpu_count: int
    cpu_delay_total_ns: int
    cpu_run_real_total_ns: int
    blkio_count: int
    blkio_delay_total_ns: int
    utime_us: int
    stime_us: int
    minflt: int
    majflt: int
    wpcopy_count: int | None
    wpcopy_delay_total_ns: int | None
    size: int  # bytes the kernel sent: tells a newer struct from the header's

    @property
    def exited_normally(self) -> bool:
        """True for an exit record of a task that called exit (not killed by a signal)."""
        return (self.exitcode & 0x7F) == 0


def _u(buf: bytes, off: int, fmt: str) -> int:
    return struct.unpack_from(fmt, buf, off)[0]


def parse_taskstats(payload: bytes, pid: int, aggregate: bool = False) -> TaskStats:
    """Decode a ``struct taskstats`` payload by the layout of the version it carries.

    ``pid`` is the id from the PID/TGID attribute that accompanies the struct. An unknown
    version raises :class:`TaskstatsVersionError`; a record shorter than its version's
    struct (or too short for the basic fields) raises :class:`TaskstatsError`.
    """
    if len(payload) < 2:
        raise TaskstatsError(f"taskstats payload of {len(payload)} bytes is too short")
    version = _u(payload, 0, "=H")
    lay = layout(version)
    if version >= EXACT_SIZE_SINCE and len(payload) < lay.size:
        raise TaskstatsError(
            f"taskstats version {version} record of {len(payload)} bytes, "
            f"shorter than the struct's {lay.size}"
        )

    def field(name: str) -> int | None:
        if name not in lay.fields:  # a field newer than the record's version
            return None
        off, fmt = lay.fields[name]
        if off + struct.calcsize("=" + fmt) > len(payload):
            return None
        return _u(payload, off, "=" + fmt)

    def required(name: str) -> int:
        value = field(name)
        if value is None:
            raise TaskstatsError(f"taskstats payload of {len(payload)} bytes is too short")
        return value

    comm_off = lay.fields["ac_comm"][0]
    required("ac_majflt")  # the basic accounting fields are in every version
    comm_raw = payload[comm_off : comm_off + TS_COMM_LEN]
    comm = comm_raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return TaskStats(
        pid=pid,
        aggregate=aggregate,
        version=version,
        comm=comm,
        tgid=field("ac_tgid"),
        ppid=required("ac_ppid"),
        uid=required("ac_uid"),
        exitcode=required("ac_exitcode"),
        cpu_count=required("cpu_count"),
        cpu_delay_total_ns=required("cpu_delay_total"),
        cpu_run_real_total_ns=required("cpu_run_real_total"),
        blkio_count=required("blkio_count"),
        blkio_delay_total_ns=required("blkio_delay_total"),
        utime_us=required("ac_utime"),
        stime_us=required("ac_stime"),
        minflt=required("ac_minflt"),
        majflt=required("ac_majflt"),
        wpcopy_count=field("wpcopy_count"),
        wpcopy_delay_total_ns=field("wpcopy_delay_total"),
        size=len(payload),
    )


# --- netlink framing -----------------------------------------------------------------------


def _align4(n: int) -> int:
    return (n + 3) & ~3


def pack_attr(attr_type: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, attr_type) + value + b"\0" * (_align4(length) - length)


def pack_genl_request(family: int, cmd: int, attrs: bytes, seq: int, version: int = 1) -> bytes:
    """A complete generic netlink request: nlmsghdr + genlmsghdr + attributes."""
    body = _GENLMSGHDR.pack(cmd, version, 0) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, NLM_F_REQUEST, seq, 0) + body


def parse_attrs(data: bytes) -> list[tuple[int, bytes]]:
    """Split a run of netlink attributes into (type without flag bits, payload) pairs."""
    out: list[tuple[int, bytes]] = []
    off = 0
    while off + _NLATTR.size <= len(data):
        length, attr_type = _NLATTR.unpack_from(data, off)
        if length < _NLATTR.size or off + length > len(data):
            raise TaskstatsError(f"malformed netlink attribute at offset {off}")
        out.append((attr_type & NLA_TYPE_MASK, data[off + _NLATTR.size : off + length]))
        off += _align4(length)
    return out


@dataclass(frozen=True)
class NetlinkMessage:
    """One netlink message: its header fields and the bytes after the nlmsghdr."""

    msg_type: int
    flags: int
    seq: int
    port: int
    payload: bytes


def split_messages(data: bytes) -> list[NetlinkMessage]:
    """Split one datagram into its netlink messages."""
    out: list[NetlinkMessage] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, port = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            raise TaskstatsError(f"malformed netlink message at offset {off}")
        out.append(
            NetlinkMessage(msg_type, flags, seq, port, data[off + _NLMSGHDR.size : off + length])
        )
        off += _align4(length)
    return out


def check_error(msg: NetlinkMessage) -> None:
    """Raise for an NLMSG_ERROR carrying a non-zero error (zero is an acknowledgement)."""
    if msg.msg_type == NLMSG_ERROR:
        (err,) = _NLMSGERR.unpack_from(msg.payload, 0)
        if err != 0:
            raise TaskstatsError(f"netlink error: {os.strerror(-err)}", -err)


def genl_attrs(msg: NetlinkMessage) -> tuple[int, list[tuple[int, bytes]]]:
    """The generic netlink command and the top-level attributes of a message."""
    if len(msg.payload) < _GENLMSGHDR.size:
        raise TaskstatsError("generic netlink message without a genlmsghdr")
    cmd, _version, _reserved = _GENLMSGHDR.unpack_from(msg.payload, 0)
    return cmd, parse_attrs(msg.payload[_GENLMSGHDR.size :])


def parse_family_id(msg: NetlinkMessage) -> int:
    """The family id from a CTRL_CMD_NEWFAMILY answer to CTRL_CMD_GETFAMILY."""
    check_error(msg)
    _cmd, attrs = genl_attrs(msg)
    for attr_type, value in attrs:
        if attr_type == CTRL_ATTR_FAMILY_ID:
            return _u(value, 0, "=H")
    raise TaskstatsError("CTRL_CMD_GETFAMILY answer without CTRL_ATTR_FAMILY_ID")


def parse_stats_message(msg: NetlinkMessage) -> list[TaskStats]:
    """Every taskstats record in a TASKSTATS message (a GET answer or an exit event).

    An exit event carries an AGGR_PID record and, when the last thread of a multi-threaded
    group exits, an AGGR_TGID record too.
    """
    check_error(msg)
    _cmd, attrs = genl_attrs(msg)
    out: list[TaskStats] = []
    for attr_type, value in attrs:
        if attr_type not in (TASKSTATS_TYPE_AGGR_PID, TASKSTATS_TYPE_AGGR_TGID):
            continue
        ident: int | None = None
        stats: bytes | None = None
        for inner_type, inner in parse_attrs(value):
            if inner_type in (TASKSTATS_TYPE_PID, TASKSTATS_TYPE_TGID):
                ident = _u(inner, 0, "=I")
            elif inner_type == TASKSTATS_TYPE_STATS:
                stats = inner
        if ident is None or stats is None:
            raise TaskstatsError("taskstats record without an id or a struct")
        out.append(parse_taskstats(stats, ident, attr_type == TASKSTATS_TYPE_AGGR_TGID))
    return out


# --- the sockets ---------------------------------------------------------------------------


def _open_socket(rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    if rcvbuf:
        try:  # SO_RCVBUFFORCE ignores net.core.rmem_max; needs CAP_NET_ADMIN
            sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((0, 0))
    return sock


class _Requester:
    """A socket for request/answer exchanges, with sequence numbers."""

    def __init__(self) -> None:
        self.sock = _open_socket()
        self.seq = int(time.time()) & 0xFFFF

    def close(self) -> None:
        self.sock.close()

    def request(self, family: int, cmd: int, attrs: bytes, version: int = 1) -> NetlinkMessage:
        """Send one request and return the first answer with its sequence number."""
        self.seq += 1
        self.sock.send(pack_genl_request(family, cmd, attrs, self.seq, version))
        while True:
            data = self.sock.recv(65536)
            for msg in split_messages(data):
                if msg.seq == self.seq:
                    return msg


_family_cache: int | None = None


def resolve_family(requester: _Requester | None = None) -> int:
    """The TASKSTATS generic netlink family id (asked once, then cached)."""
    global _family_cache
    if _family_cache is not None:
        return _family_cache
    own = requester is None
    req = requester or _Requester()
    try:
        name = pack_attr(CTRL_ATTR_FAMILY_NAME, TASKSTATS_GENL_NAME.encode() + b"\0")
        msg = req.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, name)
        try:
            _family_cache = parse_family_id(msg)
        except TaskstatsError as exc:
            if exc.errno == errno.ENOENT:
                raise TaskstatsError(
                    "the kernel has no TASKSTATS netlink family (CONFIG_TASKSTATS is off)",
                    exc.errno,
                ) from exc
            raise
    finally:
        if own:
            req.close()
    return _family_cache


def _query(attr: int, ident: int) -> TaskStats:
    req = _Requester()
    try:
        family = resolve_family(req)
        msg = req.request(family, TASKSTATS_CMD_GET, pack_attr(attr, struct.pack("=I", ident)))
        try:
            records = parse_stats_message(msg)
        except TaskstatsError as exc:
            if exc.errno == errno.ESRCH:
                raise TaskstatsError(f"no task {ident}", exc.errno) from exc
            raise
    finally:
        req.close()
    if not records:
        raise TaskstatsError(f"taskstats answer for {ident} carried no record")
    return records[0]


def query_pid(pid: int) -> TaskStats:
    """The current counts of one task (thread) ``pid``; raises TaskstatsError if it is gone."""
    return _query(TASKSTATS_CMD_ATTR_PID, pid)


def query_tgid(tgid: int) -> TaskStats:
    """The summed counts of every thread of the group ``tgid``, living and exited.

    This is the per-process figure to compare with a multi-threaded writer's copies.
    """
    return _query(TASKSTATS_CMD_ATTR_TGID, tgid)


def possible_cpus() -> str:
    """The kernel's possible-CPU list (e.g. ``0-1``), the mask an exit listener registers."""
    try:
        return Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return f"0-{(os.cpu_count() or 1) - 1}"


class ExitListener:
    """Collects the record the kernel sends for every task that exits while it listens.

    Why: a process' final ``wpcopy_count`` can only be read from its exit record, since
    ``query_pid`` fails once the task has been reaped. A background thread drains the socket
    so that bursts of exits do not overflow it; ``lost`` counts the times the kernel still
    reported an overrun (ENOBUFS), after which some records may be missing.

    Use as a context manager; registration happens on entry, deregistration on exit.
    """

    def __init__(self, cpumask: str | None = None, rcvbuf: int = 16 << 20) -> None:
        self.cpumask = cpumask or possible_cpus()
        self.rcvbuf = rcvbuf
        self.lost = 0
        self._pids: dict[int, TaskStats] = {}
        self._tgids: dict[int, TaskStats] = {}
        self._arrived: dict[tuple[bool, int], float] = {}  # (aggregate, pid) -> monotonic time
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._family = 0

    def __enter__(self) -> ExitListener:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Register for exit records of tasks on every CPU of the mask and start draining.

        First asks for this process' own record: a kernel whose ``struct taskstats`` version
        is unknown is refused here, in one line, instead of every exit record being dropped
        later as unreadable."""
        self._family = resolve_family()
        query_pid(os.getpid())
        sock = _open_socket(self.rcvbuf)
        mask = pack_attr(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, self.cpumask.encode() + b"\0")
        sock.send(pack_genl_request(self._family, TASKSTATS_CMD_GET, mask, 1))
        # A successful registration sends no answer; a refused one answers NLMSG_ERROR at once.
        sock.settimeout(0.05)
        try:
            for msg in split_messages(sock.recv(65536)):
                self._handle(msg)
        except TimeoutError:
            pass
        except TaskstatsError:
            sock.close()
            raise
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._drain, name="taskstats-exit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Deregister, stop the reader and close the socket (records stay readable)."""
        if self._sock is None:
            return
        mask = pack_attr(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, self.cpumask.encode() + b"\0")
        # If this fails, closing the socket makes the kernel drop the listener anyway.
        with contextlib.suppress(OSError):
            self._sock.send(pack_genl_request(self._family, TASKSTATS_CMD_GET, mask, 2))
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sock.close()
        self._sock = None

    def _handle(self, msg: NetlinkMessage) -> None:
        if msg.msg_type in (NLMSG_DONE, NLMSG_OVERRUN):
            return
        if msg.msg_type == NLMSG_ERROR:
            check_error(msg)
            return
        if msg.msg_type != self._family:
            return
        records = parse_stats_message(msg)
        with self._cond:
            for rec in records:
                (self._tgids if rec.aggregate else self._pids)[rec.pid] = rec
                self._arrived[(rec.aggregate, rec.pid)] = time.monotonic()
            self._cond.notify_all()

    def _drain(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                if self._stop.is_set():
                    return
                raise
            for msg in split_messages(data):
                try:
                    self._handle(msg)
                except TaskstatsError:
                    continue  # one bad record must not stop the collection of the rest

    @property
    def records(self) -> dict[int, TaskStats]:
        """Exit records by task id (a copy)."""
        with self._cond:
            return dict(self._pids)

    @property
    def group_records(self) -> dict[int, TaskStats]:
        """Exit records of whole multi-threaded groups, by tgid (a copy)."""
        with self._cond:
            return dict(self._tgids)

    def take_group_exits(self, tgids: list[int], max_age_s: float = 60.0) -> dict[int, TaskStats]:
        """Remove and return the final record of each process in `tgids`: its group record
        when a multi-threaded group sent one, else its main thread's.

        Records nobody took within `max_age_s` are dropped, so that a listener running for
        days (the metrics agent) stays small whatever else exits on the machine."""
        out: dict[int, TaskStats] = {}
        with self._cond:
            for tgid in tgids:
                record = self._tgids.pop(tgid, None) or self._pids.pop(tgid, None)
                if record is not None:
                    out[tgid] = record
            cutoff = time.monotonic() - max_age_s
            for key, arrived in list(self._arrived.items()):
                if arrived < cutoff or (key[1] in out):
                    del self._arrived[key]
                    (self._tgids if key[0] else self._pids).pop(key[1], None)
        return out

    def wait_for(self, pid: int, timeout: float = 5.0, group: bool = False) -> TaskStats | None:
        """The exit record of task ``pid`` (or of group ``pid``), waiting up to ``timeout``.

        A single-threaded process gets no group record: ask with ``group=False`` for it.
        """
        table = self._tgids if group else self._pids
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid not in table:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return table[pid]


# --- the sysctl ----------------------------------------------------------------------------


def delayacct_enabled() -> bool:
    """Whether the kernel is counting delays (and so wpcopy_count) for new activity."""
    try:
        return DELAYACCT_SYSCTL.read_text().strip() == "1"
    except OSError:
        return False


def enable_delayacct() -> bool:
    """Turn delay accounting on; returns the previous state so a caller can restore it.

    Tasks count only what happens while it is on: enable it before the work to measure.
    Shared by every cowtrace process at once (switch_users.py): the state returned is the one
    before the first of them, and only the last one to restore puts it back.
    """
    try:
        return _DELAYACCT_USERS.acquire(_switch_delayacct_on)
    except OSError:  # no registry (/run not writable): this process alone
        return _switch_delayacct_on()


def _switch_delayacct_on() -> bool:
    before = delayacct_enabled()
    if not before:
        try:
            DELAYACCT_SYSCTL.write_text("1\n")
        except OSError as exc:
            raise CowtraceError(
                f"cannot enable delay accounting: {exc.strerror}",
                hint="sysctl kernel.task_delayacct=1 (as root)",
            ) from exc
    return before


def restore_delayacct(previous: bool) -> None:
    """Put the sysctl back to what :func:`enable_delayacct` returned, once no other cowtrace
    process uses it any more."""
    try:
        shared = _DELAYACCT_USERS.release(_switch_delayacct_off)
    except OSError:
        shared = False
    if not shared and not previous:
        _switch_delayacct_off()


def _switch_delayacct_off() -> None:
    if delayacct_enabled():
        DELAYACCT_SYSCTL.write_text("0\n")


_DELAYACCT_USERS = SharedSwitch("delayacct")
