"""The taskstats netlink client: per-task queries, and a listener for the records of exits.

It talks generic netlink directly with :mod:`socket` and :mod:`struct` (pyroute2's parser
stops before the wpcopy fields, and is one more dependency); the records it receives are
decoded by :mod:`cowtrace.host.taskstats.record`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cowtrace.host.taskstats.record import TaskStats, TaskstatsError, parse_taskstats

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

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLATTR = struct.Struct("=HH")  # len, type
_NLMSGERR = struct.Struct("=i")  # error, followed by the offending header


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
            return struct.unpack_from("=H", value, 0)[0]
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
                ident = struct.unpack_from("=I", inner, 0)[0]
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
