"""`cowtrace run -- COMMAND ARGS...`: start a command with tracing active from its start.

The command is started through a launcher (launcher.py) held before exec until its pid is in
the kernel's member table, then released: nothing it does, its first fork included, escapes
the tracer, and nothing cowtrace does is counted on it.  Its stdin, stdout and stderr are
ours, untouched; our own view goes to stderr.  We exit with its exit status (128+N when a
signal N killed it, as shells do).

Signals: before the release, SIGINT aborts (the command never starts) and SIGTERM or SIGHUP
end cowtrace at once (the launcher then reads EOF and exits, or dies of its death signal);
once the handlers are in place a stop signal that arrives before the release abandons the
command, and after it SIGTERM, SIGHUP and repeated SIGINTs are passed on to the command.
Whatever kills cowtrace kills the command too (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace.checks import require_tracing_ready
from cowtrace.commands.options import TracingOptions, with_tracing_options
from cowtrace.errors import CowtraceError
from cowtrace.host import procfs

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


def run(argv: list[str], options: OutputOptions, session_options: SessionOptions) -> int:
    # Imported here, not at the top: `--help` and shell completion import this module.
    from cowtrace.commands.common import (
        Reporter,
        StopSignals,
        start_metrics,
        trace_until_stopped,
        view_stream,
    )
    from cowtrace.launcher import ExecError, LaunchedCommand
    from cowtrace.session import Session

    executable = resolve_command(argv)
    require_tracing_ready()
    session = Session(0, session_options)
    command: LaunchedCommand | None = None
    exporter = start_metrics(options)
    try:
        session.open()
        command = LaunchedCommand(executable, argv)
        stat = procfs.read_stat(command.pid)
        if stat is None:
            raise CowtraceError("the command vanished before it started")
        session.set_root(command.pid)
        session.attach_root(stat, adopted=False, await_exec=True)
        session.cover_program(executable)
        child = command
        held_signals: list[int] = []

        def forward(signum: int) -> str | None:
            """SIGINT from a terminal reached the command too; SIGTERM, SIGHUP and repeated
            SIGINTs are passed on.  Tracing ends when the command does."""
            if child.held:  # the command has not started: see the release below
                held_signals.append(signum)
            elif signum != signal.SIGINT or stops.received.count(signal.SIGINT) > 1:
                child.send_signal(signum)
            return None

        def reap_command() -> str | None:
            """poll() reaps the command once it exits, so that its task is freed and its
            final counts arrive; the session then ends on the root's exit."""
            child.poll()
            return None

        with StopSignals(on_signal=forward) as stops:
            if held_signals:  # stopped before it started: it never does
                command.abandon()
                return 128 + held_signals[0]
            try:
                command.release()
            except ExecError as error:
                raise CowtraceError(
                    f"cannot execute {argv[0]}: {error.strerror}", exit_code=126
                ) from None
            while held_signals:  # arrived during the release: the command runs now
                forward(held_signals.pop(0))
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
            if command.held:
                command.abandon()
            else:
                command.wait()
