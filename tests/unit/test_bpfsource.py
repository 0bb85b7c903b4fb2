"""Where the BPF programs come from: the package cowtrace.bpf, in a checkout as in a wheel.

pyproject's package-dir maps the top-level bpf/ to cowtrace.bpf; the checkout's editable install
maps it to bpf/ itself (.ci/run checks the wheel).  There is no fallback to a path beside the
sources: a checkout that was never installed gets a one-line error that says what to do.
"""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

from cowtrace.kernel.bpfsource import program_text

REPO = Path(__file__).resolve().parents[2]


def test_programs_are_read_from_the_cowtrace_bpf_package():
    assert Path(str(resources.files("cowtrace.bpf"))).resolve() == REPO / "bpf"
    for name in ("cowtrace.bpf.c", "calibrate.bpf.c"):
        assert program_text(name) == (REPO / "bpf" / name).read_text()


def test_a_checkout_never_installed_gets_a_one_line_error(tmp_path):
    """The system interpreter, isolated, sees the checkout's sources but no installed package."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from cowtrace.errors import CowtraceError\n"
        "from cowtrace.kernel.bpfsource import program_text\n"
        "try:\n"
        "    program_text('cowtrace.bpf.c')\n"
        "except CowtraceError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", probe, str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "cowtrace's BPF programs (the package cowtrace.bpf) are not installed "
        "(fix: make setup, or pip install -e . in the checkout)\n"
    )
