"""`cowtrace report --format folded|speedscope|pprof`: each format read back by an independent
reader (plain text; speedscope's published JSON schema; protoc and the protobuf package for
pprof), with the exact stacks and weights derived by hand from the fixture files.

The summary's stacks (full_summary, as tests/unit/test_report_flame.py derives them): writer
A = leaf<f1 (30 pages) carries 15 pages of P1 (p1<top) and 9 of P2 above its leaf, B =
leaf<f2 (10) carries 5 and 3; C = other, truncated (5), carries 5 of P4's 8; the other 3 of P4
and all 3 of P3 (leaf "nope" has no native stack) stand on [native callers unknown]; the
100 - 51 pages without a stack are [no stack].
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from cowtrace.cli import main
from cowtrace.report.load import load_report
from tests.pprof_reader import read_pprof, stacks
from tests.unit.report_samples import EVENTS, core_summary, full_summary, write_json, write_lines

PAGE = 4096
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "speedscope-file-format-schema.json"

FULL_FOLDED = [
    ("[no stack]", 49),
    ("f1 (app);leaf (app)", 30 - 15 - 9),
    ("f1 (app);leaf (app);top (a.py:9);p1 (a.py:1)", 15),
    ("f1 (app);leaf (app);p2 (a.py:2)", 9),
    ("f2 (app);leaf (app)", 10 - 5 - 3),
    ("f2 (app);leaf (app);top (a.py:9);p1 (a.py:1)", 5),
    ("f2 (app);leaf (app);p2 (a.py:2)", 3),
    ("[native callers unknown];nope (app);p3 (a.py:3)", 3),
    ("[native callers unknown];other (app);p4 (a.py:4)", 3),
    ("[truncated stack];other (app);p4 (a.py:4)", 5),
]
"""Outermost frame first, in the flame graph's order (heaviest subtree first, ties by name)."""

EVENTS_FOLDED = [
    ("main (app);write_a (app)", 2),  # lines 1, 2
    ("main (app);write_b (app)", 1),  # line 3
    ("[no stack]", 2),  # lines 4 and 7: copies with neither stack
    ("[native callers unknown];gc_collect (app.py:9)", 1),  # line 9
    (
        "[truncated stack];_PyEval_EvalFrameDefault (python3.11);<module> (app.py:1);"
        "handle (app.py:42)",
        1,
    ),  # line 8
]


def report(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def folded_lines(pairs: list[tuple[str, int]]) -> str:
    return "".join(f"{stack} {pages * PAGE}\n" for stack, pages in pairs)


@pytest.fixture
def full(tmp_path: Path) -> Path:
    return write_json(tmp_path / "full.json", full_summary())


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "ev.jsonl", EVENTS)


# --- folded ------------------------------------------------------------------------------


def test_folded_from_summary(full: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = report([str(full), "--format", "folded"], capsys)
    assert (code, err) == (0, "")
    assert out == folded_lines(FULL_FOLDED)
    assert sum(int(line.rsplit(" ", 1)[1]) for line in out.splitlines()) == 100 * PAGE


def test_folded_from_event_log(events: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report([str(events), "-f", "folded"], capsys)
    assert code == 0
    assert out == folded_lines(EVENTS_FOLDED)


def test_folded_without_stacks_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    core = write_json(tmp_path / "core.json", core_summary())
    assert report([str(core), "-f", "folded"], capsys)[1] == f"[no stack] {100 * PAGE}\n"
    empty = core_summary()
    empty["totals"].update(copies=0, copied_bytes=0)
    for p in empty["processes"]:
        p.update(copies=0, copied_bytes=0)
    assert report([str(write_json(tmp_path / "e.json", empty)), "-f", "folded"], capsys)[1] == ""


def test_folded_keeps_frames_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = core_summary()
    summary["writers"] = [
        {"frames": ["a;b (x.so)", "main (app)"], "copies": 100, "copied_bytes": 100 * PAGE}
    ]
    out = report([str(write_json(tmp_path / "s.json", summary)), "-f", "folded"], capsys)[1]
    assert out == f"main (app);a:b (x.so) {100 * PAGE}\n"


# --- speedscope --------------------------------------------------------------------------


def speedscope_stacks(document: dict, profile: int) -> list[tuple[str, int]]:
    """The samples of one profile as (names joined outermost first, weight)."""
    frames = document["shared"]["frames"]
    p = document["profiles"][profile]
    return [
        (";".join(frames[i]["name"] for i in sample), weight)
        for sample, weight in zip(p["samples"], p["weights"], strict=True)
    ]


def validate(document: dict) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator_class(schema).validate(document)


def test_speedscope_follows_the_schema(full: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = full.parent / "copies.speedscope.json"
    code, out, err = report([str(full), "--format", "speedscope", "-o", str(out_path)], capsys)
    assert code == 0 and out == ""
    assert err.strip() == f"cowtrace: wrote {out_path}"
    document = json.loads(out_path.read_text())
    validate(document)
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    by_bytes, by_copies = document["profiles"]
    assert (by_bytes["type"], by_bytes["unit"], by_bytes["name"]) == (
        "sampled",
        "bytes",
        "copied bytes",
    )
    assert (by_copies["unit"], by_copies["name"]) == ("none", "copies")
    assert by_bytes["startValue"] == 0 and by_bytes["endValue"] == 100 * PAGE
    assert by_copies["endValue"] == 100
    # Speedscope names a frame by its function; file and line are separate fields.
    short = [
        (";".join(f.split(" (")[0] for f in stack.split(";")), pages)
        for stack, pages in FULL_FOLDED
    ]
    assert speedscope_stacks(document, 0) == [(s, n * PAGE) for s, n in short]
    assert speedscope_stacks(document, 1) == short
    frames = document["shared"]["frames"]
    assert len(frames) == len({json.dumps(f, sort_keys=True) for f in frames})  # shared, once
    assert {"name": "top", "file": "a.py", "line": 9} in frames
    assert {"name": "leaf", "file": "app"} in frames
    assert {"name": "[native callers unknown]"} in frames


def test_speedscope_schema_rejects_what_it_should(full: Path) -> None:
    """The vendored schema is the real one: it does reject a broken file."""
    from cowtrace.report.speedscope import speedscope_document

    document = speedscope_document(load_report(str(full)))
    del document["profiles"][0]["weights"]
    with pytest.raises(jsonschema.ValidationError, match="not valid under any of the given"):
        validate(document)


def test_speedscope_of_event_log(events: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report([str(events), "-f", "speedscope"], capsys)
    assert code == 0
    document = json.loads(out)
    validate(document)
    assert [w // PAGE for _, w in speedscope_stacks(document, 0)] == [n for _, n in EVENTS_FOLDED]
    frames = document["shared"]["frames"]
    assert {"name": "handle", "file": "app.py", "line": 42} in frames
    assert {"name": "_PyEval_EvalFrameDefault", "file": "python3.11"} in frames


# --- pprof -------------------------------------------------------------------------------


def names(frames: tuple) -> str:
    """A decoded pprof stack in folded form: outermost first, as cowtrace names frames."""
    parts = []
    for f in reversed(frames):
        if f.mapping is not None:
            assert f.file == f.mapping  # a native function's file is its module
            parts.append(f.function if f.function.startswith("[") else f"{f.function} ({f.file})")
        elif f.file:
            assert f.line == f.start_line
            parts.append(f"{f.function} ({f.file}:{f.line})")
        else:
            parts.append(f.function)
    return ";".join(parts)


def test_pprof_decodes_with_profile_proto(full: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = full.parent / "copies.pb.gz"
    code, _, _ = report([str(full), "--format", "pprof", "-o", str(out_path)], capsys)
    assert code == 0
    blob = out_path.read_bytes()
    assert blob[:2] == b"\x1f\x8b"  # gzipped, as pprof files are on disk
    profile = read_pprof(blob)
    strings = list(profile.string_table)
    assert strings[0] == ""
    assert len(strings) == len(set(strings))
    types = [(strings[t.type], strings[t.unit]) for t in profile.sample_type]
    assert types == [("copies", "count"), ("copied", "bytes")]
    assert strings[profile.default_sample_type] == "copied"
    assert profile.duration_nanos == 4_500_000_000
    assert "copy-on-write copies in" in strings[profile.comment[0]]
    decoded = [(names(frames), values) for frames, values in stacks(profile)]
    assert decoded == [(s, (n, n * PAGE)) for s, n in FULL_FOLDED]
    assert [strings[m.filename] for m in profile.mapping] == ["app"]
    assert all(m.has_functions for m in profile.mapping)
    ids = [loc.id for loc in profile.location]
    assert sorted(ids) == list(range(1, len(ids) + 1))  # nonzero and unique
    # One Location and one Function per distinct frame: 13 in this file.
    assert len(profile.location) == len(profile.function) == 13


def test_pprof_of_event_log_has_python_files_and_lines(
    events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = events.parent / "p.pb.gz"
    assert report([str(events), "-f", "pprof", "-o", str(blob)], capsys)[0] == 0
    decoded = stacks(read_pprof(blob.read_bytes()))
    assert [(names(f), v) for f, v in decoded] == [(s, (n, n * PAGE)) for s, n in EVENTS_FOLDED]
    python_stack = next(f for f, _ in decoded if f[0].function == "handle")
    leaf, module, evaluator, truncated = python_stack
    assert (leaf.file, leaf.line, leaf.start_line, leaf.mapping) == ("app.py", 42, 42, None)
    assert (module.function, module.file, module.line) == ("<module>", "app.py", 1)
    assert (evaluator.function, evaluator.mapping) == ("_PyEval_EvalFrameDefault", "python3.11")
    assert (truncated.function, truncated.file, truncated.mapping) == (
        "[truncated stack]",
        "",
        None,
    )


def test_pprof_to_a_terminal_is_refused(
    full: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    code, out, err = report([str(full), "-f", "pprof"], capsys)
    assert code != 0 and out == ""
    assert (
        err.strip() == "cowtrace: error: pprof output is binary: give -o FILE, or redirect stdout"
    )


def test_unknown_frames_stay_apart_in_pprof(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pprof ranks by function name: two modules' unnamed code must not become one function."""
    summary = core_summary()
    summary["writers"] = [
        {"frames": ["[unknown] (a.so)"], "copies": 60},
        {"frames": ["[unknown] (b.so)"], "copies": 40},
    ]
    blob = tmp_path / "u.pb.gz"
    assert (
        report(
            [str(write_json(tmp_path / "s.json", summary)), "-f", "pprof", "-o", str(blob)], capsys
        )[0]
        == 0
    )
    decoded = stacks(read_pprof(blob.read_bytes()))
    assert [(f[0].function, f[0].mapping, v) for f, v in decoded] == [
        ("[unknown] (a.so)", "a.so", (60, 60 * PAGE)),
        ("[unknown] (b.so)", "b.so", (40, 40 * PAGE)),
    ]


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-f", "xml"],
            "unknown format 'xml': choose one of text, html, folded, speedscope, pprof",
        ),
        (
            ["-f", "folded", "--html", "x.html"],
            "--html writes HTML: it cannot be combined with --format folded",
        ),
        (
            ["--html", "x.html", "-o", "y"],
            "--html OUT already names the output: drop -o, or use -o alone",
        ),
    ],
)
def test_bad_options_are_one_line_errors(
    full: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = report([str(full), *args], capsys)
    assert code != 0 and out == ""
    assert err == f"cowtrace: error: {message}\n"


def test_html_format_is_the_html_option(full: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, by_option, _ = report([str(full), "--html", "-"], capsys)
    _, by_format, _ = report([str(full), "--format", "html"], capsys)
    assert by_option == by_format and by_format.startswith("<!DOCTYPE html>")


def test_text_to_a_file(full: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, on_stdout, _ = report([str(full)], capsys)
    out_path = full.parent / "r.txt"
    code, out, _ = report([str(full), "-o", str(out_path)], capsys)
    assert code == 0 and out == ""
    assert out_path.read_text() == on_stdout
