"""How `cowtrace run` starts its command: held before its first instruction, owing nothing.

Why not fork the Python process: a forked copy of cowtrace writes to pages it shares with
cowtrace between fork() and exec(), and the kernel counts those copy-on-write copies on the
command's pid (delay accounting's ``wpcopy_count``), where cowtrace never sees them; the copy
also holds every file descriptor cowtrace had, its BPF programs included, until it execs.

So the command is started through a launcher: :func:`os.posix_spawn` (glibc clones with
``CLONE_VM | CLONE_VFORK``: the child shares cowtrace's memory until it execs, so it copies
nothing) of a 236-byte static program (``launcher_x86_64.S``, no libc, no data) that sets
``PR_SET_PDEATHSIG`` to SIGKILL, waits for one byte on a pipe, checks its parent is still
cowtrace, and execs the command. cowtrace makes the launcher's pid a member meanwhile, so
the command is traced from its first instruction, and the launcher itself writes nothing but
its own fresh stack: cowtrace's count for the command's pid equals the kernel's. If cowtrace
dies or gives up before the release, the launcher reads EOF and exits: the command never
starts; after it, the command dies with cowtrace (the death signal survives exec).

The launcher's code is assembled once (the test suite reassembles the ``.S`` and compares);
here it is wrapped in a minimal ELF header and written to a sealed memfd, so nothing is
compiled or left on disk at run time. Other architectures fall back to forking (the old way,
with the same death signal), and the count of the command's pid then includes the forked
child's copies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import platform
import signal
import struct

from cowtrace.deathsig import die_with_parent
from cowtrace.deferred_signals import deferred_stop_signals

# Assembled from launcher_x86_64.S: `as -o l.o launcher_x86_64.S && objcopy -O binary -j .text`.
LAUNCHER_CODE = bytes.fromhex(
    "488b1c244883fb060f8cb70000004c8d6424084c8d6cdc10b89d000000bf01000000be090000000f05498b"
    "7c2408e89f0000004989c6498b7c2410e8920000004989c7498b7c2418e8850000004889c54883ec1031c0"
    "4c89f74889e6ba010000000f054883f801755cb86e0000000f054839e87550b8030000004c89f70f05b848"
    "0000004c89ffbe02000000ba010000000f05b83b000000498b7c2420498d7424284c89ea0f05f7d8890424"
    "b8010000004c89ff4889e6ba040000000f05bf7f000000eb05bf01000000b8e70000000f05f431c00fb60f"
    "83e93083f909770c486bc00a4801c848ffc7ebe9c3"
)
LOAD_ADDRESS = 0x400000
MFD_CLOEXEC = 1
MFD_ALLOW_SEALING = 2
MFD_EXEC = 0x10  # needed where vm.memfd_noexec forbids executing memfds by default
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
F_ADD_SEALS = 1033
# Signals Python ignores or handles that the command must get with their default action.
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supported() -> bool:
    """Whether this machine can run the launcher (x86-64 Linux)."""
    return platform.machine() in ("x86_64", "AMD64")


def elf_image(code: bytes = LAUNCHER_CODE) -> bytes:
    """A static ELF64 executable holding `code`, entered at its first byte.

    The smallest valid layout: the ELF header, a PT_LOAD header mapping the whole file
    read+execute at LOAD_ADDRESS, a PT_GNU_STACK header (a non-executable stack), then code.
    """
    ehdr = struct.Struct("<16sHHIQQQIHHHHHH")
    phdr = struct.Struct("<IIQQQQQQ")
    offset = ehdr.size + 2 * phdr.size
    size = offset + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV
    header = ehdr.pack(
        ident, 2, 0x3E, 1, LOAD_ADDRESS + offset, ehdr.size, 0, 0, ehdr.size, phdr.size, 2, 0, 0, 0
    )
    load = phdr.pack(1, 5, 0, LOAD_ADDRESS, LOAD_ADDRESS, size, size, 0x1000)  # PT_LOAD, R+X
    stack = phdr.pack(0x6474E551, 6, 0, 0, 0, 0, 0, 16)  # PT_GNU_STACK, R+W
    return header + load + stack + code


def _launcher_fd() -> int:
    """A sealed, close-on-exec memfd holding the launcher."""
    try:
        fd = os.memfd_create("cowtrace-launcher", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC)
    except OSError as error:
        if error.errno != errno.EINVAL:  # kernels before 6.3 do not know MFD_EXEC
            raise
        fd = os.memfd_create("cowtrace-launcher", MFD_CLOEXEC | MFD_ALLOW_SEALING)
    image = elf_image()
    os.write(fd, image)
    os.fchmod(fd, 0o500)
    fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)
    return fd


class ExecError(OSError):
    """The launcher could not exec the command (errno from its execve)."""


class LaunchedCommand:
    """The command, started held: its pid exists (the launcher's), its code has not run.

    ``release()`` lets it exec; ``abandon()`` makes sure it never does.
    """

    def __init__(self, executable: str, argv: list[str]) -> None:
        self.returncode: int | None = None
        self._release = -1
        self._errors = -1
        if supported():
            self.pid = self._spawn(executable, argv)
        else:
            self.pid = self._fork(executable, argv)

    def _spawn(self, executable: str, argv: list[str]) -> int:
        image = _launcher_fd()
        release_read, release_write = os.pipe()
        error_read, error_write = os.pipe()
        try:
            os.set_inheritable(release_read, True)
            os.set_inheritable(error_write, True)
            args = [
                "cowtrace-launcher",
                str(release_read),
                str(error_write),
                str(os.getpid()),
                executable,
                *argv,
            ]
            # The launcher's death signal follows the thread that spawns it: this one (the
            # main thread) lives as long as cowtrace. A signal raised as an exception between
            # the spawn and the assignment would lose the pid: defer them meanwhile.
            with deferred_stop_signals():
                pid = os.posix_spawn(
                    f"/proc/self/fd/{image}",
                    args,
                    os.environ,
                    setsigdef=RESET_SIGNALS,
                    setsigmask=(),
                )
                self._release, self._errors = release_write, error_read
        except BaseException:
            os.close(release_write)
            os.close(error_read)
            raise
        finally:
            for fd in (image, release_read, error_write):
                os.close(fd)
        return pid

    def _fork(self, executable: str, argv: list[str]) -> int:
        """Elsewhere than x86-64: fork, and hold the child on the same pipe."""
        release_read, release_write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: wait, restore what Python changed, become the command
            try:
                os.close(release_write)
                die_with_parent(parent)
                if os.read(release_read, 1) != b"x" or os.getppid() != parent:
                    os._exit(1)
                os.close(release_read)
                for signum in RESET_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                os.execv(executable, argv)
            except OSError as error:
                os.write(2, f"cowtrace: cannot execute {argv[0]}: {error.strerror}\n".encode())
            os._exit(127)
        os.close(release_read)
        self._release = release_write
        return pid

    @property
    def held(self) -> bool:
        """Still waiting for release (or abandonment)."""
        return self._release >= 0

    def release(self) -> None:
        """Let the command start; raises ExecError if its exec failed.

        A launcher already dead (a terminal's SIGINT reaches it too) is no error: poll() and
        wait() then tell how it ended."""
        try:
            os.write(self._release, b"x")
        except BrokenPipeError:
            pass
        finally:
            os.close(self._release)
            self._release = -1
        if self._errors < 0:
            return
        try:
            # EOF: the exec succeeded (close-on-exec closed the launcher's end).
            data = os.read(self._errors, 4)
        finally:
            os.close(self._errors)
            self._errors = -1
        if len(data) == 4:
            (code,) = struct.unpack("=i", data)
            raise ExecError(code, os.strerror(code))

    def poll(self) -> int | None:
        """The exit status once it has exited (reaping it), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def abandon(self) -> None:
        """Tracing failed before the command started: it must not run untraced."""
        if self._release >= 0:
            os.close(self._release)  # the launcher reads EOF and exits 1
            self._release = -1
        if self._errors >= 0:
            os.close(self._errors)
            self._errors = -1
        self.wait()
