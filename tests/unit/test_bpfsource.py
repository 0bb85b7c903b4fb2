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
    assert program_text("calibrate.bpf.c") == (REPO / "bpf" / "calibrate.bpf.c").read_text()


def test_the_program_is_assembled_from_its_headers():
    """cowtrace.bpf.c includes the headers of bpf/ by concern; bcc gets one text with each
    header inlined once, in the order of the includes, and no local include left."""
    text = program_text("cowtrace.bpf.c")
    assert '#include "' not in text and "#pragma once" not in text
    main = (REPO / "bpf" / "cowtrace.bpf.c").read_text()
    headers = [line.split('"')[1] for line in main.splitlines() if line.startswith('#include "')]
    assert sorted(headers) == sorted(p.name for p in (REPO / "bpf").glob("*.h"))
    positions = []
    for header in headers:
        body = (REPO / "bpf" / header).read_text().replace("#pragma once\n", "", 1)
        assert text.count(body) == 1, header
        positions.append(text.index(body))
    assert positions == sorted(positions)


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
