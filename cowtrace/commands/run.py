"""`cowtrace run -- COMMAND ARGS...`: start a command with tracing active from its start.

The command is forked, held before exec until its pid is in the kernel's member table, then
released: nothing it does, its first fork included, escapes the tracer.  Its stdin, stdout and
stderr are ours, untouched; our own view goes to stderr.  We exit with its exit status (128+N
when a signal N killed it, as shells do).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace import procfs
from cowtrace.checks import require_tracing_ready
from cowtrace.commands.options import TracingOptions, with_tracing_options
from cowtrace.errors import CowtraceError

if TYPE_CHECKING:
    from cowtrace.commands.common import OutputOptions
    from cowtrace.session import SessionOptions

# Everything after the command's name is the command's, options included.
CONTEXT_SETTINGS = {"allow_interspersed_args": False, "ignore_unknown_options": True}


@with_tracing_options
def command(
    argv: Annotated[
        list[str],
        typer.Argument(
            metavar="-- COMMAND [ARGS]...",
            help="The command to start, after --.",
            show_default=False,
        ),
    ],
    *,
    tracing: TracingOptions,
) -> None:
    """Start COMMAND with tracing active before its first fork.

    Its stdin, stdout and stderr pass through untouched (cowtrace's view goes to stderr);
    cowtrace exits with the command's exit status.

    Examples:

      sudo cowtrace run -- python3 -m gunicorn --preload -w 4 app:app

      sudo cowtrace run --quiet --json - -- ./prefork-server --workers 8

      sudo cowtrace run --no-malloc --exit-window 1 -- redis-server
    """
    options = tracing.output_options()
    raise typer.Exit(run(argv, options, tracing.session_options(malloc_by_default=True)))


def resolve_command(argv: list[str]) -> str:
    """The executable `argv[0]` names, or a one-line error (exit 127, as shells use)."""
    if not argv:
        raise CowtraceError("no command given", hint="cowtrace run -- COMMAND ARGS...", exit_code=2)
    name = argv[0]
    path = shutil.which(name) if os.sep not in name else name
    if path is None or not os.path.exists(path):
        raise CowtraceError(f"command not found: {name}", exit_code=127)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CowtraceError(f"not executable: {name}", exit_code=126)
    return path


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class HeldCommand:
    """The command, forked and held before exec until released.

    subprocess.Popen cannot do this: it waits for the exec before returning, and the exec must
    wait for the tracer.  So: fork, block the child on a pipe, exec when released.
    """

    def __init__(self, executable: str, argv: list[str]) -> None:
        release_read, release_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait, restore what Python changed, become the command
            try:
                os.close(release_write)
                if os.read(release_read, 1) != b"x":
                    os._exit(1)
                os.close(release_read)
                for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                os.execv(executable, [argv[0], *argv[1:]])
            except OSError as error:
                os.write(2, f"cowtrace: cannot execute {argv[0]}: {error.strerror}\n".encode())
            os._exit(127)
        os.close(release_read)
        self.pid = pid
        self._release = release_write
        self.returncode: int | None = None

    def release(self) -> None:
        os.write(self._release, b"x")
        os.close(self._release)
        self._release = -1

    def poll(self) -> int | None:
        """The exit status once it has exited (reaping it), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except InterruptedError:
                continue
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def abandon(self) -> None:
        """Tracing failed before the command started: it must not run untraced."""
        if self._release >= 0:
            os.close(self._release)  # the child reads EOF and exits 1
            self._release = -1
        self.wait()


def run(argv: list[str], options: OutputOptions, session_options: SessionOptions) -> int:
    # Imported here, not at the top: `--help` and shell completion import this module.
    from cowtrace.commands.common import (
        Reporter,
        StopSignals,
        start_metrics,
        trace_until_stopped,
        view_stream,
    )
    from cowtrace.session import Session

    executable = resolve_command(argv)
    require_tracing_ready()
    session = Session(0, session_options)
    command: HeldCommand | None = None
    exporter = start_metrics(options)
    try:
        session.open()
        command = HeldCommand(executable, argv)
        stat = procfs.read_stat(command.pid)
        if stat is None:
            raise CowtraceError("the command vanished before it started")
        session.set_root(command.pid)
        session.attach_root(stat, adopted=False, await_exec=True)
        session.cover_program(executable)
        command.release()
        child = command

        def forward(signum: int) -> str | None:
            """SIGINT from a terminal reached the command too; SIGTERM and repeated SIGINTs
            are passed on.  Tracing ends when the command does."""
            if signum == signal.SIGTERM or stops.received.count(signal.SIGINT) > 1:
                child.send_signal(signum)
            return None

        def reap_command() -> str | None:
            """poll() reaps the command once it exits, so that its task is freed and its
            final counts arrive; the session then ends on the root's exit."""
            child.poll()
            return None

        with StopSignals(on_signal=forward) as stops:
            reporter = Reporter(options, view_stream(options, command_owns_stdout=True))
            trace_until_stopped(
                session, options, stops, reporter, extra_stop=reap_command, exporter=exporter
            )
            returncode = command.wait()
        return exit_status(returncode)
    finally:
        session.close()
        if exporter is not None:
            exporter.close()
        if command is not None and command.returncode is None:
            if command._release >= 0:
                command.abandon()
            else:
                command.wait()
