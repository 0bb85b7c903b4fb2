"""Shared test set-up.

Tests marked `kernel` load BPF programs and need root on a kernel cowtrace supports.  Where
that is impossible they skip, except under COWTRACE_REQUIRE_KERNEL=1 (CI), where a kernel test
that cannot run is a failure: a green CI must mean the tracer was exercised for real.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers import kernel_unavailable_reason, wait_until_unloaded

pytest_plugins = ["tests.fixtures.conftest_helpers"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: loads BPF programs; needs root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kernel)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("COWTRACE_REQUIRE_KERNEL") == "1":
        pytest.fail(f"kernel test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def no_leaked_bpf(request: pytest.FixtureRequest):
    """Every kernel test must leave no cowtrace BPF program loaded behind it."""
    yield
    if request.node.get_closest_marker("kernel") is not None and os.geteuid() == 0:
        leaked = wait_until_unloaded()  # the kernel frees programs after their last fd closes
        assert not leaked, f"BPF programs left loaded: {leaked}"
