"""Find, on the running kernel, the stack slots that identify a copy-on-write allocation.

The tracer decides whether a page allocation is do_wp_page's copy by reading three words of
the kernel stack at fixed distances from the raw tracepoint's argument array (see
bpf/cowtrace.bpf.c).  Those distances depend on the kernel build (frame sizes, inlining), so
they are measured here: a short-lived calibration process makes a few copy-on-write copies,
zero-fills and file copies while calibrate.bpf.c records both the unwound stack and the raw
stack words of every allocation; the slot that holds the unwound return address is the answer.

The result depends only on the kernel build, so it is cached per `uname -r` and `uname -v`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cowtrace.deathsig import die_with_parent
from cowtrace.deferred_signals import deferred_stop_signals
from cowtrace.errors import CowtraceError
from cowtrace.host.memory import PAGE_SIZE
from cowtrace.kernel.abi import CALIBRATION_SAMPLE_DTYPE, read_record
from cowtrace.kernel.bpfsource import compile_program
from cowtrace.kernel.kallsyms import FunctionRange, KernelSymbols

CACHE_DIR = Path("/var/cache/cowtrace")


def cache_dir() -> Path:
    """Where the calibration is cached: systemd's ``$CACHE_DIRECTORY`` (set by
    ``CacheDirectory=cowtrace``; the only writable place under ``ProtectSystem=strict``), else
    :data:`CACHE_DIR`.  systemd may list several directories separated by ``:``; the first is
    ours."""
    configured = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    return Path(configured) if configured else CACHE_DIR


CALIBRATION_PAGES = 32
PAGE = PAGE_SIZE


@dataclass(frozen=True)
class Calibration:
    """Stack slots (in 8-byte words above ctx) and the function whose return address each
    holds.  Function names, not addresses, are cached: addresses move with KASLR."""

    slot_alloc_vma: int
    slot_alloc_wp: int
    slot_alloc_exc: int
    slot_rss_wp: int
    iter_shift_alloc: int  # extra words when the tracepoint runs through __traceiter_*
    iter_shift_rss: int
    alloc_function: str  # the function do_wp_page calls to allocate (vma_alloc_folio...)
    wp_function: str  # do_wp_page
    fault_function: str  # exc_page_fault

    def cflags(self, symbols: KernelSymbols) -> list[str]:
        """The -D flags cowtrace.bpf.c needs, with this boot's addresses."""
        flags = [
            f"-DSLOT_ALLOC_VMA={self.slot_alloc_vma}",
            f"-DSLOT_ALLOC_WP={self.slot_alloc_wp}",
            f"-DSLOT_ALLOC_EXC={self.slot_alloc_exc}",
            f"-DSLOT_RSS_WP={self.slot_rss_wp}",
            f"-DITER_SHIFT_ALLOC={self.iter_shift_alloc}",
            f"-DITER_SHIFT_RSS={self.iter_shift_rss}",
        ]
        for prefix, name in (
            ("VMA_ALLOC", self.alloc_function),
            ("DO_WP_PAGE", self.wp_function),
            ("EXC_PF", self.fault_function),
        ):
            function = symbols.function(name)
            flags += [
                f"-D{prefix}_LO={function.start:#x}ULL",
                f"-D{prefix}_HI={function.end:#x}ULL",
            ]
        return flags


def _cache_path() -> Path:
    uname = os.uname()
    key = f"{uname.release}-{hashlib.sha256(uname.version.encode()).hexdigest()[:12]}"
    return cache_dir() / f"calibration-{key}.json"


def load_or_calibrate(symbols: KernelSymbols, *, use_cache: bool = True) -> Calibration:
    """The calibration for this kernel: from the cache, or measured now (about a second)."""
    path = _cache_path()
    if use_cache and path.exists():
        try:
            return Calibration(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # a stale or damaged cache entry: measure again
    calibration = calibrate(symbols)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(calibration)))
    except OSError:
        pass  # a read-only /var is no reason not to trace
    return calibration


def _calibration_workload(go_read: int, parent: int) -> None:
    """Runs in a forked child: copies, zero-fills and file copies through do_wp_page.

    Only once cowtrace says go (EOF: it died or gave up), and never after it has exited."""
    die_with_parent(parent)
    if os.read(go_read, 1) != b"x":
        return
    size = CALIBRATION_PAGES * PAGE
    anon = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for offset in range(0, size, PAGE):
        anon[offset] = 1
    hold_read, hold_write = os.pipe()
    child = os.getpid()
    sibling = os.fork()
    if sibling == 0:  # keeps the pages shared until released
        os.close(hold_write)
        die_with_parent(child)
        os.read(hold_read, 1)
        os._exit(0)
    for offset in range(0, size, PAGE):  # copy: the sibling still maps every page
        anon[offset] = 2
    zero = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    zero[0] = 1  # gives the mapping an anon_vma
    for offset in range(PAGE, size, PAGE):
        _ = zero[offset]  # maps the shared zero page
    for offset in range(PAGE, size, PAGE):
        zero[offset] = 1  # zero-fill
    with tempfile.TemporaryFile() as backing:
        backing.write(b"x" * size)
        backing.flush()
        private = mmap.mmap(backing.fileno(), size, flags=mmap.MAP_PRIVATE)
        for offset in range(0, size, PAGE):
            _ = private[offset]  # maps the page-cache page read-only
        for offset in range(0, size, PAGE):
            private[offset] = 3  # copy from the file's page
    os.write(hold_write, b"x")
    os.waitpid(sibling, 0)


def calibrate(symbols: KernelSymbols) -> Calibration:
    """Measure the slots now."""
    go_read, go_write = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        status = 0
        try:
            os.close(go_write)
            _calibration_workload(go_read, parent)
        except BaseException:  # noqa: BLE001 - a child must never return into the caller
            status = 1
        os._exit(status)
    os.close(go_read)
    samples: list[np.void] = []
    bpf = second = None
    try:
        bpf = compile_program("calibrate.bpf.c", [f"-DCALIB_TGID={child}"])
        second = compile_program("calibrate.bpf.c", ["-DCALIB_TGID=0xffffffffU"])

        def collect(_ctx: object, data: int, _size: int) -> None:
            samples.append(read_record(data, CALIBRATION_SAMPLE_DTYPE))

        bpf["samples"].open_ring_buffer(collect)
        os.write(go_write, b"x")
        _, status = os.waitpid(child, 0)
        child = 0
        with deferred_stop_signals():  # `collect` is called back from C (deferred_signals.py)
            bpf.ring_buffer_consume()
    finally:
        os.close(go_write)
        if child:
            os.kill(child, 9)
            os.waitpid(child, 0)
        for program in (bpf, second):
            if program is not None:
                program.cleanup()
    if os.waitstatus_to_exitcode(status) != 0:
        raise CowtraceError("calibration workload failed")
    return analyse(samples, symbols)


def _slot_of(words: list[int], value: int) -> set[int]:
    return {index for index, word in enumerate(words) if word == value}


def _consistent_slot(candidates: list[set[int]], what: str) -> int:
    if not candidates:
        raise CowtraceError(f"calibration saw no {what}: this kernel is not supported")
    common = set.intersection(*candidates)
    if not common:
        raise CowtraceError(f"calibration found no fixed stack slot for {what}")
    return min(common)


def _iterator_shift(frames: list[int], words: list[int], symbols: KernelSymbols) -> int | None:
    """Words the __traceiter_* frame adds, when the sample went through it (else 0)."""
    for index, frame in enumerate(frames[:-1]):
        function = symbols.containing(frame)
        if function is not None and function.name.startswith("__traceiter_"):
            here, above = _slot_of(words, frame), _slot_of(words, frames[index + 1])
            if not here or not above:
                return None
            return min(above) - min(here)
    return 0


def analyse(samples: list[np.void], symbols: KernelSymbols) -> Calibration:
    """Derive the slots from recorded samples (pure: testable on recorded data).

    Slots are returned for the direct layout (one program on the tracepoint); the iterator
    layout is the same plus a shift, measured here too."""
    wp = symbols.function("do_wp_page")
    fault = symbols.function("exc_page_fault")
    alloc_slots: list[set[int]] = []
    wp_slots: list[set[int]] = []
    exc_slots: list[set[int]] = []
    rss_slots: list[set[int]] = []
    shifts: dict[int, Counter[int]] = {1: Counter(), 2: Counter()}
    alloc_functions: Counter[str] = Counter()

    for sample in samples:  # CALIBRATION_SAMPLE_DTYPE records
        kind = int(sample["kind"])
        count = max(0, int(sample["nframes_bytes"])) // 8
        frames = sample["frames"][:count].tolist()
        words = sample["words"].tolist()
        wp_index = next((i for i, frame in enumerate(frames) if frame in wp), None)
        if wp_index is None or wp_index == 0:
            continue
        shift = _iterator_shift(frames, words, symbols)
        if shift is None:
            continue
        shifts[kind][shift] += 1

        def direct(value: int, words: list[int] = words, shift: int = shift) -> set[int]:
            return {slot - shift for slot in _slot_of(words, value)}

        if kind == 2:
            rss_slots.append(direct(frames[wp_index]))
            continue
        callee: FunctionRange | None = symbols.containing(frames[wp_index - 1])
        if callee is None:
            continue
        alloc_functions[callee.name] += 1
        alloc_slots.append(direct(frames[wp_index - 1]))
        wp_slots.append(direct(frames[wp_index]))
        exc_frame = next((frame for frame in frames[wp_index:] if frame in fault), None)
        if exc_frame is not None:
            exc_slots.append(direct(exc_frame))
    if not alloc_functions:
        raise CowtraceError("calibration saw no copy-on-write allocation: kernel not supported")

    def iter_shift(kind: int) -> int:
        measured = [shift for shift in shifts[kind] if shift > 0]
        if not measured:
            raise CowtraceError("calibration could not measure the tracepoint iterator frame")
        return max(measured, key=lambda shift: shifts[kind][shift])

    alloc_function = alloc_functions.most_common(1)[0][0]
    return Calibration(
        slot_alloc_vma=_consistent_slot(alloc_slots, "the allocation's caller"),
        slot_alloc_wp=_consistent_slot(wp_slots, "do_wp_page's allocation"),
        slot_alloc_exc=_consistent_slot(exc_slots, "the page fault entry"),
        slot_rss_wp=_consistent_slot(rss_slots, "a file-backed copy"),
        iter_shift_alloc=iter_shift(1),
        iter_shift_rss=iter_shift(2),
        alloc_function=alloc_function,
        wp_function=wp.name,
        fault_function=fault.name,
    )
