"""Which Kubernetes pod and container a process runs in, from /proc/PID/cgroup and the kubelet.

On a Kubernetes node the agent's series need a pod, not just a pid.  The cgroup path names the
pod uid and the container id in every layout the kubelet and the runtimes use:

- cgroupfs driver:  ``/kubepods/burstable/pod<uid>/<64-hex id>`` (``/kubepods/pod<uid>/...``
  for Guaranteed pods);
- systemd driver:   ``/kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _ for ->.slice/<runtime>-<64-hex id>.scope`` where the
  runtime prefix is ``cri-containerd-`` (containerd), ``crio-`` (CRI-O) or ``docker-``
  (dockershim / cri-dockerd);
- plain docker:     ``/docker/<id>`` or ``/system.slice/docker-<id>.scope`` (a container id,
  no pod).

The namespace and the pod name are not in the cgroup path.  The kubelet's directory of the pod,
``/var/lib/kubelet/pods/<uid>/``, holds them: a downward-API volume that exposes
``metadata.namespace`` / ``metadata.name`` (file names ``namespace``, ``pod`` / ``podname`` /
``name``), the service-account volume's ``namespace`` file, and ``etc-hosts``, whose pod line
names the pod's hostname (the pod name unless ``spec.hostname`` overrides it).  Whatever is not
found stays an empty string: on a host without Kubernetes every field is empty.

The roots (``proc_root``, ``kubelet_pods``) are parameters so that tests build a kubelet-style
tree in a temporary directory, and a DaemonSet can mount the host's directories elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROC_ROOT = Path("/proc")
KUBELET_PODS = Path("/var/lib/kubelet/pods")

#: The label names, in the order :meth:`PodIdentity.labels` gives their values.
POD_LABELS: tuple[str, ...] = ("namespace", "pod", "pod_uid", "container_id")

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD = re.compile(rf"pod({_UID})(?:\.slice)?$")
# A container's own cgroup: a bare id (cgroupfs driver, /docker/<id>) or a runtime's scope.
# CRI-O's conmon monitor (crio-conmon-<id>.scope) is not the container and does not match.
_CONTAINER = re.compile(
    r"(?:(?:cri-containerd|crio|docker|containerd)-)?([0-9a-f]{64})(?:\.scope)?$"
)
# A downward-API file name for the pod's name, in the order they are believed.
_POD_NAME_FILES = ("pod", "podname", "pod_name", "pod-name", "name")
_HOSTS_LOOPBACK = {"localhost", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True)
class PodIdentity:
    """A process' place in Kubernetes; empty strings where unknown."""

    namespace: str = ""
    pod: str = ""
    pod_uid: str = ""
    container_id: str = ""

    def labels(self) -> tuple[str, str, str, str]:
        """Values for :data:`POD_LABELS`."""
        return (self.namespace, self.pod, self.pod_uid, self.container_id)


NO_POD = PodIdentity()


def parse_cgroup(text: str) -> tuple[str, str]:
    """``(pod_uid, container_id)`` from the text of /proc/PID/cgroup, ``""`` for what is absent.

    Every line (``hierarchy-id:controllers:path``; one ``0::path`` line on cgroup v2) is
    looked at: on cgroup v1 the pod shows in any controller's path.  The uid is given with
    dashes whatever the driver wrote.
    """
    pod_uid = container_id = ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        line_uid = line_container = ""
        for component in parts[2].split("/"):
            if match := _POD.search(component):
                line_uid = match[1].replace("_", "-")
            elif match := _CONTAINER.fullmatch(component):
                line_container = match[1]
        if line_uid and not pod_uid:
            pod_uid = line_uid
            container_id = line_container or container_id
        elif line_container and not container_id and (not pod_uid or line_uid == pod_uid):
            container_id = line_container
    return pod_uid, container_id


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def hosts_pod_name(text: str) -> str:
    """The pod's hostname from the kubelet's etc-hosts file (``""`` when it names none, e.g. a
    hostNetwork pod): the short name of the last line that is not a loopback entry."""
    name = ""
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or _HOSTS_LOOPBACK & set(fields[1:]):
            continue
        if fields[0].startswith(("127.", "fe00:", "fe02:", "ff0")) or fields[0] == "::1":
            continue
        name = fields[-1].split(".", 1)[0]
    return name


def kubelet_names(pod_dir: Path) -> tuple[str, str]:
    """``(namespace, pod)`` from the kubelet's directory of one pod; ``""`` for what it does
    not say."""
    namespace = pod = ""
    volumes = pod_dir / "volumes"
    for downward in sorted(volumes.glob("kubernetes.io~downward-api/*")):
        namespace = namespace or _read(downward / "namespace")
        for name in _POD_NAME_FILES:
            pod = pod or _read(downward / name)
    if not namespace:
        for projected in sorted(volumes.glob("kubernetes.io~projected/*")):
            namespace = _read(projected / "namespace")
            if namespace:
                break
    if not pod:
        pod = hosts_pod_name(_read(pod_dir / "etc-hosts"))
    return namespace, pod


def pod_identity(
    pid: int, proc_root: Path = PROC_ROOT, kubelet_pods: Path = KUBELET_PODS
) -> PodIdentity:
    """Where process ``pid`` runs; :data:`NO_POD` outside Kubernetes or once it has gone."""
    pod_uid, container_id = parse_cgroup(_read(proc_root / str(pid) / "cgroup"))
    if not pod_uid:
        return PodIdentity(container_id=container_id)
    namespace, pod = kubelet_names(kubelet_pods / pod_uid)
    return PodIdentity(namespace, pod, pod_uid, container_id)
