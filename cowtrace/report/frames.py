"""What a frame name says, read back: cowtrace names frames one way everywhere (the live view,
the summary, the event log), and the report's joins and profiler formats split them here.

- native: ``function (module)``; ``[unknown] (module)`` when the object has no symbol there
  (kernel/stacks.py), ``[unknown]`` when no mapping is known;
- a Python writer's ``native_leaf``: ``function``, or ``module+0xOFFSET`` when the object has
  no symbol there (python/resolve.py), with no module in parentheses;
- Python: ``qualname (file:line)`` (python/resolve.py).
"""

from __future__ import annotations

import re

UNKNOWN = "[unknown]"

_NATIVE = re.compile(r"(?P<function>.*) \((?P<module>[^()]*)\)")
# The qualname is the shortest prefix: a file path may hold " (", a qualname never does.
_PYTHON = re.compile(r"(?P<function>.*?) \((?P<file>.*):(?P<line>\d+)\)")
_OFFSET = re.compile(r"(?P<module>.+)\+0x[0-9a-fA-F]+")


def split_native(name: str) -> tuple[str, str | None]:
    """(function, module) of ``function (module)``; (name, None) for any other form."""
    match = _NATIVE.fullmatch(name)
    if match and match["function"]:
        return match["function"], match["module"]
    return name, None


def split_python(name: str) -> tuple[str, str, int] | None:
    """(qualname, file, line) of ``qualname (file:line)``; None for any other form."""
    match = _PYTHON.fullmatch(name)
    return (match["function"], match["file"], int(match["line"])) if match else None


def leaf_key(name: str) -> tuple[str, str]:
    """The code a native leaf names, comparable between a native stack's leaf frame
    (``PyType_Ready (python3.11)``, ``[unknown] (python3.11)``) and a Python writer's
    ``native_leaf`` (``PyType_Ready``, ``python3.11+0x1ad23f``): ("function", name), or
    ("unknown", module) for code of a module without a symbol there."""
    function, module = split_native(name)
    if function == UNKNOWN and module:
        return "unknown", module
    offset = _OFFSET.fullmatch(function)
    if offset and (module is None or module == offset["module"]):
        return "unknown", offset["module"]
    return "function", function
