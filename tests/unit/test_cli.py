"""The command line's habits: --version, -p/--pid, shell completion, one-line errors.

Commands run in-process through `cowtrace.cli.main` with the tracing body replaced, so no BPF
is loaded; completion runs the real entry point in a subprocess, as a shell would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from cowtrace.cli import _argv_with_default_command, main
from cowtrace.commands import trace as trace_module
from tests.helpers import assert_one_line_error

COWTRACE = [sys.executable, "-m", "cowtrace"]
NO_SUCH_PID = 999999999  # above pid_max (at most 2**22): never a process


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """What `trace` was called with, instead of tracing."""
    calls: list[tuple] = []

    def fake_trace(pid, options, session_options):  # noqa: ANN001, ANN202
        calls.append((pid, options, session_options))
        return 0

    monkeypatch.setattr(trace_module, "trace", fake_trace)
    return calls


# --- --version -----------------------------------------------------------------------------


def test_version_option_prints_the_installed_version(capsys):
    code, out, err = run(["--version"], capsys)
    assert (code, out, err) == (0, f"cowtrace {version('cowtrace')}\n", "")


def test_version_command_prints_the_same_version(capsys):
    code, out, _ = run(["version"], capsys)
    assert (code, out) == (0, f"{version('cowtrace')}\n")


def test_version_option_wins_over_a_command(capsys):
    code, out, _ = run(["--version", "doctor"], capsys)
    assert (code, out) == (0, f"cowtrace {version('cowtrace')}\n")


# --- -p/--pid and the default command --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["1234", "--quiet"], ["trace", "--quiet", "--", "1234"]),
        (["-p", "1234", "--quiet"], ["trace", "-p", "1234", "--quiet"]),
        (["-p1234"], ["trace", "-p1234"]),
        (["--pid", "1234"], ["trace", "--pid", "1234"]),
        (["--pid=1234"], ["trace", "--pid=1234"]),
        (["trace", "1234"], ["trace", "1234"]),
        (["run", "--", "-p", "1"], ["run", "--", "-p", "1"]),
        (["--version"], ["--version"]),
        ([], []),
    ],
)
def test_default_command(argv, expected):
    assert _argv_with_default_command(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["trace", "1234"],
        ["1234"],
        ["-p", "1234"],
        ["--pid", "1234"],
        ["--pid=1234"],
        ["-p1234"],
        ["trace", "-p", "1234"],
        ["trace", "--pid", "1234"],
        ["trace", "1234", "-p", "1234"],
    ],
)
def test_every_way_to_give_the_pid_traces_the_same(argv, traced, capsys):
    options = ["--duration", "3", "--json", "out.json", "--exit-window", "1", "--no-stacks"]
    assert run([*argv, *options], capsys) == (0, "", "")
    assert run(["trace", "1234", *options], capsys) == (0, "", "")
    assert len(traced) == 2
    pid, output, session = traced[0]
    assert traced[0] == traced[1]
    assert pid == 1234
    assert (output.duration, output.json_path, output.metrics) == (3.0, "out.json", None)
    assert (session.exit_window_s, session.stacks, session.malloc) == (1.0, False, False)


def test_trace_and_run_share_their_options(traced, monkeypatch, capsys):
    """The options declared once reach both commands alike; only --malloc's default differs."""
    from cowtrace.commands import run as run_module

    runs: list[tuple] = []
    monkeypatch.setattr(run_module, "run", lambda *args: runs.append(args) or 0)
    options = ["--interval", "2", "--events", "-", "--ring-mb", "4", "--no-python-stacks"]
    assert run(["trace", "1", *options], capsys)[0] == 0
    assert run(["run", *options, "--", "true", "-p", "1"], capsys)[0] == 0
    (pid, trace_output, trace_session), (argv, run_output, run_session) = traced[0], runs[0]
    assert (pid, argv) == (1, ["true", "-p", "1"])
    assert trace_output == run_output
    assert (trace_output.interval, trace_output.events_path) == (2.0, "-")
    assert (trace_session.malloc, run_session.malloc) == (False, True)
    run_session.malloc = False
    assert trace_session == run_session
    assert (run_session.ring_bytes, run_session.python_stacks) == (4 << 20, False)


# --- one-line errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "pattern"),
    [
        (["-p", "notanumber"], 2, r"Invalid value for '--pid' / '-p'.*\(see cowtrace trace --help"),
        (["--pid=notanumber"], 2, r"Invalid value for '--pid' / '-p'"),
        (["trace", "notanumber"], 2, r"Invalid value for 'PID'"),
        (["-p", str(NO_SUCH_PID)], 1, rf"no process with pid {NO_SUCH_PID}$"),
        ([str(NO_SUCH_PID)], 1, rf"no process with pid {NO_SUCH_PID}$"),
        (["trace", "--pid", str(NO_SUCH_PID)], 1, rf"no process with pid {NO_SUCH_PID}$"),
        (["-p"], 2, r"Option '-p' requires an argument"),
        (["trace"], 2, r"no PID given \(fix: cowtrace trace PID, or cowtrace -p PID\)"),
        (["trace", "12", "-p", "13"], 2, r"two different PIDs given: 12 and -p 13"),
        (["bogus"], 2, r"No such command 'bogus' \(see cowtrace --help\)"),
        (["trace", "1", "--bogus"], 2, r"No such option: --bogus \(see cowtrace trace --help\)"),
        (["trace", "1", "--duration", "-1"], 2, r"Invalid value for '--duration'"),
        (["run"], 2, r"Missing argument '-- COMMAND \[ARGS\]\.\.\.' \(see cowtrace run --help\)"),
        (["report"], 2, r"Missing argument 'FILE' \(see cowtrace report --help\)"),
        (["agent", "--pid", "x"], 2, r"Invalid value for '--pid' / '-p'"),
    ],
)
def test_errors_are_one_line(argv, code, pattern, capsys):
    got, out, err = run(argv, capsys)
    assert got == code
    assert out == ""
    assert_one_line_error(got, err, pattern)


def test_bare_cowtrace_still_shows_the_help(capsys):
    code, out, err = run([], capsys)
    assert code == 2
    assert "Usage: cowtrace [OPTIONS] COMMAND [ARGS]..." in out + err
    assert "-p 1234" in out + err


def test_help_shows_the_new_options(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in out
    code, out, _ = run(["trace", "--help"], capsys)
    assert code == 0
    assert re.search(r"-p, --pid PID\s+The root process", out)


# --- shell completion ------------------------------------------------------------------------


def complete(words: str) -> list[str]:
    """What bash completion offers for the last word of `words` (the protocol click speaks)."""
    env = {
        **os.environ,
        "_COWTRACE_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    done = subprocess.run(COWTRACE, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_offers_commands_and_options():
    assert complete("cowtrace tr") == ["trace"]
    assert complete("cowtrace re") == ["report"]
    assert set(complete("cowtrace trace --p")) == {
        "--pid",
        "--plain",
        "--pid-label-grace",
        "--python-stacks",
        "--python-types-top",
        "--python-types-budget",
    }
    assert complete("cowtrace agent --sc") == ["--scan-interval"]


def test_completion_after_the_pid_shorthand():
    """`cowtrace PID --p<TAB>` and `cowtrace -p PID --p<TAB>` complete trace's options."""
    expected = {"--pid", "--plain", "--pid-label-grace", "--python-stacks", "--python-types-top"}
    expected.add("--python-types-budget")
    assert set(complete("cowtrace 1234 --p")) == expected
    assert set(complete("cowtrace -p 1234 --p")) == expected - {"--pid"}  # given once already
    assert complete("cowtrace 1234 --dur") == ["--duration"]


def test_show_completion_prints_a_bash_script():
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    done = subprocess.run(
        [*COWTRACE, "--show-completion", "bash"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "_COWTRACE_COMPLETE=complete_bash" in done.stdout
    assert "complete -o default -F _cowtrace_completion cowtrace" in done.stdout
