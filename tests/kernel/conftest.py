"""Fixtures shared by the end-to-end example tests: delay accounting on, and a reaper that
stops every process a test started, even when the test fails half-way."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from cowtrace.host import taskstats
from tests.e2e import kill_tree


@pytest.fixture(scope="module")
def delayacct_on() -> Iterator[None]:
    previous = taskstats.enable_delayacct()
    yield
    taskstats.restore_delayacct(previous)


@pytest.fixture
def reaper() -> Iterator[Callable]:
    """``reaper(x)`` registers a Popen (killed with its descendants) or an object with a
    ``close()`` (called); everything registered is cleaned up in reverse order."""
    items: list = []

    def register(item):
        items.append(item)
        return item

    yield register
    errors = []
    for item in reversed(items):
        try:
            if isinstance(item, subprocess.Popen):
                kill_tree(item)
            else:
                item.close()
        except Exception as exc:  # keep cleaning up the rest
            errors.append(exc)
    if errors:
        raise errors[0]
