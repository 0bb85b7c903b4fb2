"""The ``struct taskstats`` record: its layout in every version, and its decoding.

The kernel sends ``sizeof(struct taskstats)`` of its own version, and
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

import functools
import struct
from dataclasses import dataclass

from cowtrace.errors import CowtraceError

TS_COMM_LEN = 32  # <linux/taskstats.h>


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
