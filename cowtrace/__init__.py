"""cowtrace: live copy-on-write tracing of a process family after fork()."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`cowtrace.__version__`, read when first asked for (importlib.metadata costs ~20 ms)."""
    if name != "__version__":
        raise AttributeError(f"module 'cowtrace' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        # One source of truth: pyproject.toml's version, as the installed metadata has it.
        value = version("cowtrace")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        value = "0+unknown"
    globals()["__version__"] = value
    return value
