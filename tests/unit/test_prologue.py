"""Where allocator probes go (kernel/prologue.py), on the prologues of this system's glibc
2.36 and jemalloc 5.3 (bytes copied from the objects)."""

from __future__ import annotations

from cowtrace.kernel.prologue import emulated_offset


def test_push_at_entry_stays_at_entry():
    assert emulated_offset(bytes.fromhex("415455534889fb4883ec1080"), 1) == 0  # glibc malloc


def test_flag_setting_instructions_are_skipped_up_to_a_branch():
    assert emulated_offset(bytes.fromhex("4885ff0f84bf00000055488d"), 1) == 3  # glibc free
    assert emulated_offset(bytes.fromhex("4881ff001000000f87930000"), 1) == 7  # jemalloc malloc
    assert emulated_offset(bytes.fromhex("803d010214000041544989d4"), 3) == 7  # posix_memalign


def test_a_write_to_a_needed_register_keeps_the_entry():
    # mov %rdi,%rsi; push %rbx: the probe would read a clobbered second argument.
    assert emulated_offset(bytes.fromhex("4889fe53"), 2) == 0
    # ... but the first argument alone is fine.
    assert emulated_offset(bytes.fromhex("4889fe53"), 1) == 3


def test_unknown_instructions_keep_the_entry():
    # jemalloc free: mov, mov, mov, shr (not understood) before any branch.
    code = bytes.fromhex("4889f8488b150e530a004889f948c1e81a")
    assert emulated_offset(code, 1) == 0
    assert emulated_offset(b"", 1) == 0
