"""cowtrace/kernel/abi.py against bpf/*.h: the numbers and record layouts both sides read must
be the same, field by field, so a field added on one side only fails here instead of shifting
every field behind it at run time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cowtrace.kernel import abi
from tests.cdecl import CSource, CStruct

BPF = Path(__file__).resolve().parents[2] / "bpf"
SOURCE = CSource(*sorted(BPF.glob("*.c")), *sorted(BPF.glob("*.h")))

# The C enums whose every enumerator user space reads, each with its Python prefix.
SHARED_ENUMS = (
    "KIND_",
    "SOURCE_",
    "VIA_",
    "EP_",
    "PE_",
    "MF_",
    "STAT_",
    "WRITER_PROG_",
    "PYF_",
    "ALLOC_OP_",
    "ALLOCATOR_",
)
# C struct -> the dtype user space reads it with (ring dtypes without their 8-byte header).
RING_HEADER = 8
RECORDS = {
    "cow_event": (abi.EVENT_PAYLOAD_DTYPE, 0),
    "fault_batch": (abi.BATCH_DTYPE, RING_HEADER),
    "alloc_event": (abi.ALLOC_EVENT_DTYPE, RING_HEADER),
    "proc_event": (abi.PROC_EVENT_DTYPE, 0),
    "py_new_stack": (abi.PY_NEW_STACK_DTYPE, 0),
    "sample": (abi.CALIBRATION_SAMPLE_DTYPE, 0),  # calibrate.bpf.c
}


def dtype_fields(dtype: np.dtype, skip: int) -> list[tuple[str, int, int]]:
    """(name, offset, size) of every field of ``dtype`` after its first ``skip`` bytes."""
    fields = []
    for name in dtype.names:
        field, offset = dtype.fields[name][:2]
        if offset >= skip:
            fields.append((name, offset - skip, field.itemsize))
    return fields


def c_fields(struct: CStruct) -> list[tuple[str, int, int]]:
    return [(f.name, f.offset, f.size) for f in struct.fields]


def python_constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(abi).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }


@pytest.mark.parametrize("prefix", SHARED_ENUMS)
def test_every_shared_enumerator_has_its_python_twin(prefix: str) -> None:
    c_side = {n: v for n, v in SOURCE.constants.items() if n.startswith(prefix)}
    py_side = {n: v for n, v in python_constants().items() if n.startswith(prefix)}
    assert c_side, f"no C enumerator starts with {prefix}"
    assert py_side == c_side


def test_every_python_constant_the_c_side_declares_has_its_value() -> None:
    shared = python_constants().keys() & SOURCE.constants.keys()
    assert {"FAULT_BATCH", "NSTATS", "KIND_COPY", "PE_MAPS"} <= shared
    assert {n: python_constants()[n] for n in shared} == {n: SOURCE.constants[n] for n in shared}


@pytest.mark.parametrize("struct", sorted(RECORDS))
def test_record_layouts_match_field_by_field(struct: str) -> None:
    dtype, header = RECORDS[struct]
    c_struct = SOURCE.structs[struct]
    assert dtype_fields(dtype, header) == c_fields(c_struct)
    assert dtype.itemsize - header == c_struct.size


@pytest.mark.parametrize(
    ("table", "prefix"),
    [
        (abi.KIND_NAMES, "KIND_"),
        (abi.SOURCE_NAMES, "SOURCE_"),
        (abi.VIA_NAMES, "VIA_"),
        (abi.ALLOCATOR_NAMES, "ALLOCATOR_"),
    ],
)
def test_every_decoder_names_every_value_of_its_enum(table: dict[int, str], prefix: str) -> None:
    values = {v for n, v in SOURCE.constants.items() if n.startswith(prefix)}
    assert set(table) == values


def test_decoders_print_the_contract_words() -> None:
    """product.md's --events contract: kind and source words."""
    assert sorted(abi.KIND_NAMES.values()) == ["copy", "reuse", "zero_fill"]
    assert sorted(abi.SOURCE_NAMES.values()) == ["anon", "file"]
    assert sorted(abi.VIA_NAMES.values()) == ["gup", "kernel", "user"]


def test_a_field_added_on_one_side_only_fails() -> None:
    """The check itself: a C struct with one more field no longer matches its dtype."""
    text = (BPF / "cowtrace.h").read_text()
    grown = text.replace(
        "struct proc_event {\n    u64 ts;",
        "struct proc_event {\n    u64 ts;\n    u32 new_field;",
        1,
    )
    assert grown != text
    c_struct = CSource.from_text(grown).structs["proc_event"]
    assert dtype_fields(abi.PROC_EVENT_DTYPE, 0) != c_fields(c_struct)
