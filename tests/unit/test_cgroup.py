"""Pod and container labels from /proc/PID/cgroup and the kubelet's pod directory
(cowtrace/host/cgroup.py), with cgroup lines as each kubelet driver and runtime writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowtrace.host.cgroup import (
    NO_POD,
    PodIdentity,
    hosts_pod_name,
    parse_cgroup,
    pod_identity,
)
from cowtrace.metrics.address import ListenAddress
from cowtrace.metrics.collector import Health
from cowtrace.metrics.exporter import MetricsExporter, MetricsOptions
from cowtrace.model import Counts, Member, Role, Snapshot

UID = "8b0c6f2e-3a1d-4c5e-9f70-1234567890ab"
UID_ = UID.replace("-", "_")
CID = "4f1c2d3e" * 8  # 64 hex digits

CASES = {
    "cgroupfs, containerd, cgroup v2": (f"0::/kubepods/burstable/pod{UID}/{CID}\n", UID, CID),
    "cgroupfs, guaranteed pod": (f"0::/kubepods/pod{UID}/{CID}\n", UID, CID),
    "systemd, containerd": (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        UID,
        CID,
    ),
    "systemd, CRI-O": (
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope\n",
        UID,
        CID,
    ),
    "systemd, guaranteed, cri-dockerd": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope\n",
        UID,
        CID,
    ),
    "CRI-O conmon is not the container": (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope\n",
        UID,
        "",
    ),
    "cgroup v1, systemd driver, every controller": (
        "12:memory:/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        "11:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        "0::/\n",
        UID,
        CID,
    ),
    "pod cgroup itself (pause-less process)": (
        f"0::/kubepods/burstable/pod{UID}\n",
        UID,
        "",
    ),
    "seen from the agent's own cgroup namespace": (
        "0::/../../kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        UID,
        CID,
    ),
    "plain docker, cgroupfs": (f"0::/docker/{CID}\n", "", CID),
    "plain docker, systemd": (f"0::/system.slice/docker-{CID}.scope\n", "", CID),
    "host service": ("0::/system.slice/nginx.service\n", "", ""),
    "host user session": ("0::/user.slice/user-0.slice/session-3.scope\n", "", ""),
    "empty (process gone)": ("", "", ""),
}


@pytest.mark.parametrize(("text", "uid", "cid"), CASES.values(), ids=CASES.keys())
def test_parse_cgroup_layouts(text: str, uid: str, cid: str) -> None:
    assert parse_cgroup(text) == (uid, cid)


ETC_HOSTS = """# Kubernetes-managed hosts file.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
10.244.1.7\tweb-7d9c-xk2pq
"""


def test_hosts_pod_name() -> None:
    assert hosts_pod_name(ETC_HOSTS) == "web-7d9c-xk2pq"
    with_subdomain = ETC_HOSTS.replace(
        "10.244.1.7\tweb-7d9c-xk2pq", "10.244.1.7\tdb-0.db.shop.svc.cluster.local\tdb-0"
    )
    assert hosts_pod_name(with_subdomain) == "db-0"
    host_network = "\n".join(ETC_HOSTS.splitlines()[:-1])
    assert hosts_pod_name(host_network) == ""


def kubelet_tree(tmp_path: Path, pid: int, cgroup: str) -> tuple[Path, Path]:
    """A /proc with one process and a kubelet pods directory with its pod, as a node has them."""
    proc, pods = tmp_path / "proc", tmp_path / "var/lib/kubelet/pods"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(cgroup)
    pod_dir = pods / UID
    (pod_dir / "containers" / "web").mkdir(parents=True)
    (pod_dir / "etc-hosts").write_text(ETC_HOSTS)
    token = pod_dir / "volumes" / "kubernetes.io~projected" / "kube-api-access-x8v2d"
    token.mkdir(parents=True)
    (token / "namespace").write_text("shop")
    (token / "ca.crt").write_text("")
    return proc, pods


def test_pod_identity_from_a_kubelet_tree(tmp_path: Path) -> None:
    proc, pods = kubelet_tree(tmp_path, 4242, CASES["systemd, containerd"][0])
    assert pod_identity(4242, proc, pods) == PodIdentity("shop", "web-7d9c-xk2pq", UID, CID)


def test_downward_api_volume_wins(tmp_path: Path) -> None:
    proc, pods = kubelet_tree(tmp_path, 4242, CASES["cgroupfs, containerd, cgroup v2"][0])
    downward = pods / UID / "volumes" / "kubernetes.io~downward-api" / "podinfo"
    downward.mkdir(parents=True)
    (downward / "namespace").write_text("shop-prod\n")
    (downward / "podname").write_text("web-renamed\n")
    assert pod_identity(4242, proc, pods) == PodIdentity("shop-prod", "web-renamed", UID, CID)


def test_pod_without_kubelet_directory_keeps_its_uid(tmp_path: Path) -> None:
    proc, _ = kubelet_tree(tmp_path, 4242, CASES["systemd, CRI-O"][0])
    assert pod_identity(4242, proc, tmp_path / "elsewhere") == PodIdentity("", "", UID, CID)


def test_host_process_and_gone_process_have_no_pod(tmp_path: Path) -> None:
    proc, pods = kubelet_tree(tmp_path, 1, "0::/init.scope\n")
    assert pod_identity(1, proc, pods) == NO_POD
    assert pod_identity(999, proc, pods) == NO_POD


def test_every_series_of_a_family_carries_its_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two families, one in a pod, one on the host: labels per root, no extra series."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    proc, pods = kubelet_tree(tmp_path, 100, CASES["systemd, containerd"][0])
    (proc / "200").mkdir()
    (proc / "200" / "cgroup").write_text("0::/system.slice/gunicorn.service\n")
    monkeypatch.setattr("cowtrace.metrics.exporter.rollup_gauges", lambda pid: {})
    options = MetricsOptions(
        ListenAddress("127.0.0.1", 0),
        pod_identity=lambda pid: pod_identity(pid, proc, pods),
    )
    exporter = MetricsExporter(options)
    snapshots = [
        Snapshot(
            root,
            0.0,
            1.0,
            [
                Member(root, 1, "master", Role.ROOT, 0.0, counts=Counts(copies=1)),
                Member(root + 1, root, "worker", Role.CHILD, 0.0, counts=Counts(copies=5)),
            ],
            Counts(),
        )
        for root in (100, 200)
    ]
    exporter.update(snapshots, Health(), now=1.0)
    text = generate_latest(exporter.registry).decode()
    copies = {
        (s.labels["root"], s.labels["pid"]): s.labels
        for family in text_string_to_metric_families(text)
        if family.name == "cowtrace_copies"
        for s in family.samples
    }
    assert len(copies) == 4
    in_pod = {"namespace": "shop", "pod": "web-7d9c-xk2pq", "pod_uid": UID, "container_id": CID}
    on_host = {"namespace": "", "pod": "", "pod_uid": "", "container_id": ""}
    for (root, _), labels in copies.items():
        expected = in_pod if root == "100" else on_host
        assert {k: labels[k] for k in expected} == expected
    # Read once per root, dropped when the family and its series are gone.
    assert sorted(exporter.pods) == [100, 200]
    exporter.update(snapshots[1:], Health(), now=2.0)
    assert sorted(exporter.pods) == [100, 200]  # root 100's members are still in their grace
