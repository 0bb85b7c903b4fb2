"""The deployment files a cluster operator reviews: the DaemonSet, the image's build context and
the systemd unit (examples/agent/), and the cache directory the unit gives cowtrace."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

import pytest

from cowtrace.kernel import calibrate

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "examples" / "agent"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def daemonset() -> dict:
    yaml = pytest.importorskip("yaml")
    documents = list(yaml.safe_load_all((AGENT / "daemonset.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["Namespace", "DaemonSet"]
    return documents[1]


def test_daemonset_pod_spec() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["kubernetes.io/arch"] == "amd64"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["automountServiceAccountToken"] is False
    assert spec["hostPID"] is True
    (container,) = spec["containers"]
    assert container["image"].endswith(f":{VERSION}")  # pinned to the package version
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 9949, "protocol": "TCP"} in container["ports"]
    kubelet = [m for m in container["volumeMounts"] if m["name"] == "kubelet-pods"]
    assert kubelet == [
        {
            "name": "kubelet-pods",
            "mountPath": "/var/lib/kubelet/pods",
            "readOnly": True,
            "mountPropagation": "HostToContainer",
        }
    ]
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts == {v["name"] for v in spec["volumes"]}


def test_dockerignore_keeps_the_checkout_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "**/__pycache__", ".pytest_cache", ".ruff_cache", "tests"} <= ignored
    assert not {"cowtrace", "bpf", "pyproject.toml", "README.md", "LICENSE"} & ignored
    assert f":{VERSION}" in (AGENT / "Dockerfile").read_text()


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((AGENT / "cowtrace-agent.service").read_text())
    return parser


NEEDED_CAPS = {
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYSLOG",
    "CAP_NET_ADMIN",
}


def test_systemd_unit_confines_the_agent() -> None:
    service = unit()["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == NEEDED_CAPS
    assert set(service["AmbientCapabilities"].split()) == NEEDED_CAPS
    assert service["ProtectSystem"] == "strict"
    assert service["CacheDirectory"] == "cowtrace"
    assert service["ProtectHome"] == "read-only"
    for option in ("PrivateTmp", "NoNewPrivileges", "ProtectKernelModules", "PrivateDevices"):
        assert service[option] == "yes"
    assert service["RestrictAddressFamilies"].split() == [
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    ]
    assert "ProtectKernelLogs" not in service  # it would drop CAP_SYSLOG (/proc/kallsyms)


def test_calibration_cache_follows_systemd_cache_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    assert calibrate.cache_dir() == Path("/var/cache/cowtrace")
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/cowtrace:{tmp_path}/other")
    assert calibrate.cache_dir() == tmp_path / "cowtrace"
    assert calibrate._cache_path().parent == tmp_path / "cowtrace"


def make_variable(name: str) -> list[str]:
    """The words of a Makefile variable (`:=` then any `+=` lines)."""
    words: list[str] = []
    for match in re.finditer(
        rf"^{name} (?::=|\+=) (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE
    ):
        words += match[1].split()
    return words


def test_make_demo_installs_the_runtime_only() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert make_variable("RUNTIME_PACKAGES") == [
        "python3-bpfcc",
        "linux-headers-amd64",
        "python3-venv",
        "python3-pyelftools",
    ]
    test_only = set(make_variable("TEST_PACKAGES"))
    assert {"chromium", "prometheus", "redis-server", "nginx", "libjemalloc2", "bpftool"} <= (
        test_only
    )
    assert "\ndemo: install\n" in makefile
    assert "\ntest: dev\n" in makefile
    assert "install --no-install-recommends" in makefile
    assert make_variable("PREFIX") == ["/opt/cowtrace"]
