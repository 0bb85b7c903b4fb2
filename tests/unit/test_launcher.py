"""The launcher `cowtrace run` starts its command through (cowtrace/launcher.py).

No BPF and no root needed: these check the launcher program itself (that its bytes are the
assembly source's, that it holds the command until released, never runs it when abandoned,
reports a failed exec, and dies with the process that spawned it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cowtrace import launcher
from cowtrace.launcher import ExecError, LaunchedCommand
from tests.e2e import wait_until
from tests.helpers import in_read

pytestmark = pytest.mark.skipif(not launcher.supported(), reason="the launcher is x86-64 only")
SOURCE = Path(launcher.__file__).with_name("launcher_x86_64.S")


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None, reason="no as")
def test_code_is_the_assembled_source(tmp_path: Path) -> None:
    obj, raw = tmp_path / "launcher.o", tmp_path / "launcher.bin"
    subprocess.run(["as", "-o", str(obj), str(SOURCE)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    assert raw.read_bytes() == launcher.LAUNCHER_CODE


def test_elf_image_layout() -> None:
    image = launcher.elf_image()
    assert image[:4] == b"\x7fELF"
    assert image.endswith(launcher.LAUNCHER_CODE)
    assert len(image) == 64 + 2 * 56 + len(launcher.LAUNCHER_CODE)
    entry = int.from_bytes(image[24:32], "little")
    assert entry == launcher.LOAD_ADDRESS + 64 + 2 * 56


def test_held_until_released_then_exit_status_passes_through(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = LaunchedCommand("/bin/sh", ["sh", "-c", f"echo $0 > {marker}; exit 7", "argv0"])
    wait_until(lambda: in_read(command.pid), 60, "the launcher waits for its release")
    assert not marker.exists()
    assert command.held
    assert Path(f"/proc/{command.pid}/exe").resolve().name.startswith("memfd:cowtrace-launcher")
    command.release()
    assert command.wait() == 7
    assert marker.read_text() == "argv0\n"


def test_abandoned_command_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = LaunchedCommand("/bin/sh", ["sh", "-c", f"touch {marker}"])
    command.abandon()
    assert command.returncode == 1
    assert not marker.exists()


def test_failed_exec_is_reported_with_its_errno(tmp_path: Path) -> None:
    script = tmp_path / "no-shebang"
    script.write_bytes(b"\x00\x01binary garbage")
    script.chmod(0o755)
    command = LaunchedCommand(str(script), [str(script)])
    with pytest.raises(ExecError) as info:
        command.release()
    assert info.value.errno == errno.ENOEXEC
    assert command.wait() == 127


def test_only_inheritable_descriptors_reach_the_command(tmp_path: Path) -> None:
    """The launcher closes its pipe ends; cowtrace's own descriptors are close-on-exec."""
    listing = tmp_path / "fds"
    own = os.open(os.devnull, os.O_RDONLY)  # non-inheritable, as everything Python opens
    try:
        command = LaunchedCommand("/bin/sh", ["sh", "-c", f"ls /proc/self/fd > {listing}"])
        command.release()
        assert command.wait() == 0
    finally:
        os.close(own)
    fds = {int(fd) for fd in listing.read_text().split()}
    inherited = set()
    for fd in map(int, os.listdir("/proc/self/fd")):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if os.get_inheritable(fd):
                inherited.add(fd)
    # ls' own directory descriptor comes on top of what the shell got.
    assert own not in fds
    assert len(fds - inherited - {0, 1, 2}) <= 1


@pytest.mark.parametrize("released", [False, True], ids=["held", "running"])
def test_dies_with_the_process_that_spawned_it(tmp_path: Path, released: bool) -> None:
    """SIGKILL the spawner: a held command never starts, a running one is killed."""
    pidfile = tmp_path / "pid"
    marker = tmp_path / "ran"
    spawner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, pathlib, time
                from cowtrace.launcher import LaunchedCommand
                c = LaunchedCommand("/bin/sh", ["sh", "-c", "touch {marker}; exec sleep 60"])
                if {released}:
                    c.release()
                pathlib.Path("{pidfile}.new").write_text(str(c.pid))
                os.replace("{pidfile}.new", "{pidfile}")  # whole when it appears
                time.sleep(60)
                """
            ),
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or (released and not marker.exists()):
            assert time.monotonic() < deadline, "the spawner did not start"
            time.sleep(0.01)
        pid = int(pidfile.read_text())
    finally:
        spawner.send_signal(signal.SIGKILL)
        spawner.wait()
    deadline = time.monotonic() + 30  # the death signal is sent at once; it takes effect
    while _alive(pid) and time.monotonic() < deadline:  # when the process next runs
        time.sleep(0.01)
    assert not _alive(pid)
    assert marker.exists() == released


def _alive(pid: int) -> bool:
    """Running (zombies, reaped by whatever init adopted them, do not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"
