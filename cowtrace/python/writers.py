"""Copies per Python writer stack, their category, and the "why" lines derived from them.

Category of a copy, from the interpreter's state at the write and its native leaf:
  teardown   the runtime was finalizing (Py_FinalizeEx): copies bought nothing, the process
             is about to exit;
  gc         a collection was running (the interpreter's gc `collecting` flag), or the leaf is
             one of the collector's functions;
  allocator  the leaf is in malloc/free or CPython's own allocators (pymalloc, mimalloc);
  refcount   any other write inside the interpreter: the eval loop or an object method, which
             is where reference counts (and object fields) are written;
  other      a write elsewhere (a C extension, libc's memset or memcpy, the kernel on the
             process' behalf).
"""

from __future__ import annotations

from collections import Counter

from cowtrace.host.memory import PAGE_SIZE
from cowtrace.kernel.abi import PYF_FINALIZING, PYF_GC
from cowtrace.results import PythonRemedy, PythonWriterStat, ResolvedStack

CATEGORIES = ("gc", "refcount", "allocator", "teardown", "other")
# The "why" line of a category, "<cause> (N% of copies): <advice>" (refcount's names instead
# the object most of its copies were reached from).
_CAUSES = {
    "gc": ("garbage collection", "gc.freeze() after preload would have saved {mib} MiB"),
    "teardown": ("interpreter teardown at exit", "consider os._exit in workers"),
    "allocator": (
        "allocator bookkeeping",
        "objects allocated or freed in pages shared since the fork",
    ),
}

_GC_LEAVES = {
    "collect",
    "_PyGC_Collect",
    "PyGC_Collect",
    "gc_collect",
    "gc_collect_impl",
    "visit_decref",
    "visit_reachable",
    "visit_move",
    "update_refs",
    "subtract_refs",
    "move_unreachable",
    "move_legacy_finalizers",
    "move_legacy_finalizer_reachable",
    "deduce_unreachable",
    "handle_weakrefs",
    "finalize_garbage",
    "delete_garbage",
    "untrack_tuples",
    "untrack_dicts",
    "validate_list",
    "clear_unreachable_mask",
    "mark_all_reachable",
    "mark_stacks",
    "mark_global_roots",
    "expand_region_transitively_reachable",
}
_GC_PREFIXES = ("gc_collect", "gc_list_", "_PyGC_", "gc_")
_ALLOC_LEAVES = {
    "malloc",
    "free",
    "calloc",
    "realloc",
    "cfree",
    "_int_malloc",
    "_int_free",
    "_int_realloc",
    "malloc_consolidate",
    "unlink_chunk",
    "sysmalloc",
    "tcache_get",
    "tcache_put",
    "__libc_malloc",
    "__libc_free",
    "__libc_calloc",
    "__libc_realloc",
    "_int_free_merge_chunk",
    "_int_free_create_chunk",
    "_int_free_maybe_consolidate",
    "_PyObject_Malloc",
    "_PyObject_Calloc",
    "_PyObject_Realloc",
    "_PyObject_Free",
    "pymalloc_alloc",
    "pymalloc_free",
    "pymalloc_realloc",
    "allocate_from_new_pool",
    "insert_to_usedpool",
    "insert_to_freepool",
    "new_arena",
    "PyObject_Malloc",
    "PyObject_Free",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyMem_Malloc",
    "PyMem_Free",
    "PyMem_Realloc",
    "PyMem_Calloc",
    "PyMem_RawMalloc",
    "PyMem_RawFree",
}
_ALLOC_PREFIXES = ("_PyMem_", "_PyObject_Malloc", "_PyObject_Free", "mi_", "_mi_", "pymalloc_")


def is_interpreter_module(module: str) -> bool:
    return module.startswith(("libpython", "python"))


def categorize(flags: int, leaf: str, module: str) -> str:
    if flags & PYF_FINALIZING:
        return "teardown"
    if flags & PYF_GC or leaf in _GC_LEAVES or leaf.startswith(_GC_PREFIXES):
        return "gc"
    if leaf in _ALLOC_LEAVES or leaf.startswith(_ALLOC_PREFIXES):
        return "allocator"
    if is_interpreter_module(module):
        return "refcount"
    return "other"


class PythonWriters:
    """Adds up copies per resolved stack (frames, leaf, category) across the family."""

    def __init__(self) -> None:
        self.copies: Counter[ResolvedStack] = Counter()

    def add(self, stack: ResolvedStack, copies: int) -> None:
        self.copies[stack] += copies

    @property
    def total(self) -> int:
        return sum(self.copies.values())

    def stats(self, limit: int = 200) -> tuple[PythonWriterStat, ...]:
        ranked = sorted(self.copies.items(), key=lambda item: (-item[1], item[0].frames))
        return tuple(
            PythonWriterStat(
                frames=stack.frames,
                native_leaf=stack.native_leaf,
                category=stack.category,
                copies=copies,
            )
            for stack, copies in ranked[:limit]
        )

    def by_category(self) -> Counter[str]:
        shares: Counter[str] = Counter()
        for stack, copies in self.copies.items():
            shares[stack.category] += copies
        return shares

    def why(self) -> tuple[str, ...]:
        """One line per common cause, largest first ("N% of copies": of the copies made by
        CPython members, all of which carry a Python stack)."""
        total = self.total
        if total == 0:
            return ()
        shares = self.by_category()
        shares = Counter({k: v for k, v in shares.items() if 100 * v >= total})  # 1% or more
        lines: list[tuple[int, str]] = []

        def pct(n: int) -> str:
            return f"{100 * n / total:.0f}%"

        for category in ("gc", "refcount", "teardown", "allocator"):  # ties keep this order
            if not shares[category]:
                continue
            if category in _CAUSES:
                cause, advice = _CAUSES[category]
                share = shares[category]
                advice = advice.format(mib=f"{share * PAGE_SIZE / 2**20:.1f}")
                lines.append((share, f"{cause} ({pct(share)} of copies): {advice}"))
                continue
            reached: Counter[str] = Counter()
            for stack, copies in self.copies.items():
                if stack.category == "refcount" and stack.frames:
                    reached[stack.frames[0]] += copies
            if reached:
                frame, copies = reached.most_common(1)[0]
                lines.append(
                    (
                        copies,
                        f"reference counting on objects reached from {frame} "
                        f"({pct(copies)} of copies)",
                    )
                )
        return tuple(text for _, text in sorted(lines, key=lambda item: -item[0]))


# (remedy, the write category it removes, the action in words): see PythonRemedy.
REMEDIES = (
    ("gc_freeze", "gc", "gc.freeze() in the master before forking"),
    (
        "data_out_of_objects",
        "refcount",
        "read-only data kept out of Python objects (arrays, mmap'd files, shared memory)",
    ),
)


def remedies(writers: PythonWriters) -> tuple[PythonRemedy, ...]:
    """What each usual remedy would have saved, largest first; none without copies."""
    total = writers.total
    if not total:
        return ()
    shares = writers.by_category()
    found = [
        PythonRemedy(
            remedy=name, action=action, copies=shares[category], share=shares[category] / total
        )
        for name, category, action in REMEDIES
        if shares[category]
    ]
    return tuple(sorted(found, key=lambda r: -r.copies))
