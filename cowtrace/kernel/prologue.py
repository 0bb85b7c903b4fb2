"""Where to put an allocator's entry uprobe so that it costs microseconds, not tens of them.

A uprobe replaces an instruction with int3.  The kernel then either emulates the original
instruction (push, jmp, jcc, call, nop: cheap) or single-steps a copy of it out of line, which
takes a second trap.  In the project's VMs that single-step costs about 40 µs, against about
2 µs for an emulated one (bench/README.md).  glibc's free() starts with `test %rdi,%rdi`,
jemalloc's malloc() with `cmp $0x1000,%rdi`: both single-stepped, on the hottest calls.

So the probe moves to the first emulated instruction, provided the instructions before it only
set flags or write registers the probe does not read (the arguments it needs, and %rsp, whose
[sp] is the return address).  Only a few encodings are understood; anything else keeps the
probe at the entry (slow but right).
"""

from __future__ import annotations

RSP, RDX, RSI, RDI = 4, 2, 6, 7
ARGUMENT_REGISTERS = (RDI, RSI, RDX)  # System V: first, second, third integer argument
MAX_SCAN = 24  # bytes: the prologue only
ENDBR64 = bytes.fromhex("f30f1efa")


def _modrm_length(code: bytes, at: int) -> tuple[int, int, int, bool] | None:
    """(length of ModRM + displacement, mod, rm, is_register) for the forms understood:
    register direct, and RIP-relative; None otherwise."""
    if at >= len(code):
        return None
    modrm = code[at]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return 1, mod, rm, True
    if mod == 0 and rm == 5:
        return 5, mod, rm, False  # [rip + disp32]
    return None


def emulated_offset(code: bytes, arguments: int) -> int:
    """Offset of the first instruction the kernel emulates, reachable by skipping only
    harmless ones; 0 when none is found.  `arguments`: how many argument registers the probe
    reads (1: rdi; 2: rdi, rsi; 3: rdi, rsi, rdx)."""
    needed = {RSP, *ARGUMENT_REGISTERS[:arguments]}
    at = 0
    while at < min(len(code), MAX_SCAN):
        op = code[at]
        if code[at : at + 4] == ENDBR64:
            at += 4
            continue
        # Emulated: push reg, jcc, jmp, call, nop.
        if 0x50 <= op <= 0x57 or (
            op == 0x41 and at + 1 < len(code) and 0x50 <= code[at + 1] <= 0x57
        ):
            return at
        if 0x70 <= op <= 0x7F or op in (0xEB, 0xE9, 0xE8, 0x90):
            return at
        if op == 0x0F and at + 1 < len(code) and 0x80 <= code[at + 1] <= 0x8F:
            return at
        rex = 0
        pos = at
        if 0x40 <= op <= 0x4F:
            rex, pos = op, at + 1
            if pos >= len(code):
                return 0
            op = code[pos]
        rex_r = 8 if rex & 4 else 0
        rex_b = 8 if rex & 1 else 0
        if op in (0x85, 0x84, 0x39, 0x38, 0x3B, 0x3A):  # test / cmp r/m, r: flags only
            form = _modrm_length(code, pos + 1)
            if form is None:
                return 0
            at = pos + 1 + form[0]
            continue
        if op in (0x80, 0x81, 0x83):  # group 1 with an immediate: only cmp (/7) is harmless
            form = _modrm_length(code, pos + 1)
            if form is None or (code[pos + 1] >> 3) & 7 != 7:
                return 0
            immediate = 4 if op == 0x81 else 1
            at = pos + 1 + form[0] + immediate
            continue
        if op in (0x89, 0x8B):  # mov r/m, r  /  mov r, r/m: harmless unless it writes a needed reg
            form = _modrm_length(code, pos + 1)
            if form is None:
                return 0
            length, _mod, rm, is_register = form
            reg = ((code[pos + 1] >> 3) & 7) + rex_r
            if op == 0x89:
                if not is_register:
                    return 0  # a store to memory: not worth the risk
                dest = rm + rex_b
            else:
                dest = reg
            if dest in needed:
                return 0
            at = pos + 1 + length
            continue
        return 0
    return 0
