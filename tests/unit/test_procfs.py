"""cowtrace/host/procfs.py: /proc/PID/stat and /proc/PID/status read in one place."""

from __future__ import annotations

import os

from cowtrace.host import procfs

# A kernel thread's stat line whose comm holds a space and a ')' (fields 1 to 22 of 52).
STAT = "42 (a b) c) S 2 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1234 0 0 " + "0 " * 29 + "0\n"

STATUS = "Name:\tcowtrace\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\nCapEff:\t000001ffffffffff\n"


def test_parse_stat_splits_at_the_last_parenthesis() -> None:
    stat = procfs.parse_stat(STAT)
    assert stat == procfs.ProcStat(
        pid=42, comm="a b) c", state="S", ppid=2, flags=2129984, start_ticks=1234
    )
    assert stat.is_kernel_thread  # 2129984 = 0x208040 has PF_KTHREAD (0x200000)


def test_read_stat_of_this_process_and_of_none() -> None:
    own = procfs.read_stat(os.getpid())
    assert own is not None and (own.pid, own.ppid) == (os.getpid(), os.getppid())
    assert procfs.read_stat(2**22 + 12345) is None  # above pid_max's hard limit: never a task


def test_descendants_come_parents_first() -> None:
    tree = [procfs.ProcStat(pid, "x", "S", ppid, 0, 0) for pid, ppid in [(5, 3), (3, 1), (4, 1)]]
    assert [s.pid for s in procfs.descendants(1, tree)] == [3, 4, 5]


def test_status_field() -> None:
    assert procfs.status_field(STATUS, "VmRSS") == "65432 kB"
    assert procfs.status_field(STATUS, "CapEff") == "000001ffffffffff"
    assert procfs.status_field(STATUS, "Vm") is None
    assert procfs.status_field(STATUS, "VmSwap") is None
