"""Host checks: can cowtrace trace on this machine, and if not, what is the one thing to do.

``cowtrace doctor`` shows them all; every tracing command calls :func:`require_tracing_ready`
first, so that a missing mount or header link is reported as one actionable line instead of a
bcc compile error or a tracepoint attach failure half-way through start-up.

The pure parsing and selection helpers take their inputs as arguments (text, paths) so the unit
tests can exercise them without root or a particular kernel.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cowtrace.errors import CowtraceError
from cowtrace.host import procfs

#: Every tracepoint cowtrace attaches to (perf-style or raw), as ``group/name`` under tracefs'
#: ``events/``.  No ``syscalls/*``: one would put every task on the host on the slow syscall
#: path.
TRACEPOINTS: tuple[str, ...] = (
    "exceptions/page_fault_user",
    "exceptions/page_fault_kernel",
    "kmem/mm_page_alloc",
    "kmem/rss_stat",
    "sched/sched_process_exec",
    "sched/sched_process_exit",
    "sched/sched_process_free",
    "task/task_newtask",
    "task/task_rename",
    "mmap_lock/mmap_lock_acquire_returned",
    "signal/signal_generate",
    "signal/signal_deliver",
)

#: Kernel functions whose address ranges cowtrace reads from /proc/kallsyms to attribute
#: page allocations (a copy is an order-0 allocation made from ``do_wp_page``).
KERNEL_SYMBOLS: tuple[str, ...] = ("do_wp_page", "exc_page_fault", "vma_alloc_folio_noprof")

#: Capability bits (linux/capability.h) that loading and attaching BPF programs needs.
REQUIRED_CAPS: dict[str, int] = {"CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}

#: The BPF ring buffer cowtrace reads events from arrived in 5.8.
MIN_KERNEL: tuple[int, int] = (5, 8)

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS = Path("/sys/kernel/debug")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
KALLSYMS = Path("/proc/kallsyms")
PROC_STATUS = Path("/proc/self/status")
PROC_MOUNTS = Path("/proc/self/mounts")
MODULES_ROOT = Path("/lib/modules")
USR_SRC = Path("/usr/src")
SYSTEM_PYTHON = "/usr/bin/python3"
SYSTEM_DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")

DOCTOR_FIX = "cowtrace doctor --fix"


@dataclass(frozen=True)
class Check:
    """One host check's outcome; ``detail`` is one line, ``fix`` a command when there is one."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


# --- pure helpers ---------------------------------------------------------------------------


def parse_cap_eff(status_text: str) -> int:
    """Return the CapEff bit mask from the text of /proc/<pid>/status (0 when absent)."""
    value = procfs.status_field(status_text, "CapEff")
    return int(value, 16) if value else 0


def missing_capabilities(cap_eff: int) -> list[str]:
    """Names from :data:`REQUIRED_CAPS` whose bit is not set in ``cap_eff``."""
    return [name for name, bit in REQUIRED_CAPS.items() if not cap_eff >> bit & 1]


def parse_kernel_version(release: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a ``uname -r`` string such as ``6.18.44-fc-v769``."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else None


def parse_mounts(mounts_text: str) -> dict[str, str]:
    """Map mount point -> filesystem type from /proc/self/mounts text (later mounts win)."""
    mounts: dict[str, str] = {}
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts[fields[1].replace("\\040", " ")] = fields[2]
    return mounts


@dataclass(frozen=True)
class KallsymsScan:
    """What a pass over /proc/kallsyms found: wanted symbols' addresses, and whether any
    address at all was non-zero (all zeros means kptr_restrict hides them from us)."""

    addresses: dict[str, int]
    any_nonzero: bool


def scan_kallsyms(lines: Iterable[str], wanted: Iterable[str]) -> KallsymsScan:
    """Find the first address of each ``wanted`` symbol in kallsyms lines.

    Lines are ``address type name [module]``; only exact name matches count (so
    ``do_wp_page.cold`` is not ``do_wp_page``).
    """
    remaining = set(wanted)
    addresses: dict[str, int] = {}
    any_nonzero = False
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        try:
            address = int(fields[0], 16)
        except ValueError:
            continue
        any_nonzero = any_nonzero or address != 0
        if fields[2] in remaining:
            addresses[fields[2]] = address
            remaining.discard(fields[2])
            if not remaining and any_nonzero:
                break
    return KallsymsScan(addresses, any_nonzero)


def _version_key(path: Path) -> tuple[int, ...]:
    """Numeric sort key, so ``6.1.0-56`` sorts after ``6.1.0-9`` (unlike plain text)."""
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def newest_debian_headers(src_root: Path = USR_SRC) -> Path | None:
    """The newest installed ``linux-headers-*-amd64`` directory that has a ``-common`` mate."""
    candidates = [
        path
        for path in src_root.glob("linux-headers-*-amd64")
        if path.is_dir() and common_headers_for(path).is_dir()
    ]
    return max(candidates, key=_version_key, default=None)


def common_headers_for(headers: Path) -> Path:
    """Debian splits headers: ``linux-headers-X-amd64`` includes ``linux-headers-X-common``."""
    return headers.with_name(headers.name.removesuffix("-amd64") + "-common")


def is_debian_headers(path: Path, src_root: Path = USR_SRC) -> bool:
    """Whether ``path`` is one of Debian's ``/usr/src/linux-headers-*-amd64`` directories."""
    return path.parent == src_root and bool(re.fullmatch(r"linux-headers-.+-amd64", path.name))


def link_debian_headers(release: str, headers: Path, modules_root: Path = MODULES_ROOT) -> None:
    """Point ``<modules_root>/<release>/build`` at ``headers`` and ``source`` at its -common mate.

    Existing links are replaced; a real directory is never touched (it may be someone's own
    kernel tree), so that case raises :class:`CowtraceError`.
    """
    module_dir = modules_root / release
    module_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (("build", headers), ("source", common_headers_for(headers))):
        link = module_dir / name
        if link.exists() and not link.is_symlink():
            raise CowtraceError(f"{link} is not a symlink; not replacing it", hint=f"rm -r {link}")
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                continue
            link.unlink()
        link.symlink_to(target)


# --- checks ---------------------------------------------------------------------------------


def check_root(status_path: Path = PROC_STATUS) -> Check:
    """Loading BPF programs and attaching tracepoints needs CAP_BPF, CAP_PERFMON and
    CAP_SYS_ADMIN in the effective set, not uid 0: a systemd unit or a container may grant
    exactly those to a non-root user, and root in a restricted container may lack them."""
    euid = os.geteuid()
    try:
        cap_eff = parse_cap_eff(status_path.read_text())
    except OSError as exc:
        return Check("root", False, f"cannot read {status_path}: {exc.strerror}")
    missing = missing_capabilities(cap_eff)
    if missing:
        who = "root" if euid == 0 else f"uid {euid} (not root)"
        return Check(
            "root",
            False,
            f"running as {who}; CapEff {cap_eff:#x} lacks {', '.join(missing)}",
            "run cowtrace as root, or grant " + ", ".join(missing),
        )
    who = "euid 0" if euid == 0 else f"uid {euid}"
    return Check("root", True, f"{who} with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN")


def check_arch() -> Check:
    """The BPF code reads x86 page-fault error bits and x86 tracepoints."""
    machine = platform.machine()
    if machine == "x86_64":
        return Check("architecture", True, "x86_64")
    return Check("architecture", False, f"{machine}: cowtrace targets x86-64 Linux only")


def check_kernel(release: str | None = None) -> Check:
    """The BPF ring buffer cowtrace reads events from needs kernel 5.8 or newer."""
    release = release or platform.release()
    version = parse_kernel_version(release)
    need = ".".join(map(str, MIN_KERNEL))
    if version is None:
        return Check("kernel", False, f"cannot read a version from uname -r {release!r}")
    if version < MIN_KERNEL:
        return Check(
            "kernel",
            False,
            f"{release}: the BPF ring buffer needs >= {need}",
            f"boot a kernel >= {need} (Debian 12 ships 6.1)",
        )
    return Check("kernel", True, f"{release} (>= {need}: BPF ring buffer)")


def check_btf(path: Path = BTF_VMLINUX) -> Check:
    """bcc resolves raw and BTF tracepoint types from the kernel's own BTF."""
    if path.exists():
        return Check("BTF", True, str(path))
    return Check(
        "BTF", False, f"{path} missing", "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )


def check_mount(
    name: str, fstype: str, mountpoint: Path, fix: bool, mounts_path: Path = PROC_MOUNTS
) -> Check:
    """tracefs (and debugfs, where older tools look for it) must be mounted before bcc attaches
    tracepoints; a new machine mounts neither. Mounting them is harmless, so ``fix`` does it."""
    command = f"mount -t {fstype} nodev {mountpoint}"
    try:
        mounts = parse_mounts(mounts_path.read_text())
    except OSError as exc:
        return Check(name, False, f"cannot read {mounts_path}: {exc.strerror}")
    if mounts.get(str(mountpoint)) == fstype:
        return Check(name, True, f"mounted at {mountpoint}")
    if not fix or os.geteuid() != 0:
        return Check(name, False, f"not mounted at {mountpoint}", command)
    result = subprocess.run(command.split(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        return Check(name, False, f"{command} failed: {reason[0]}", command)
    return Check(name, True, f"was not mounted at {mountpoint}: mounted it now (fixed)")


def check_bcc(importer: Callable[[], object] | None = None) -> Check:
    """bcc is Debian's python3-bpfcc, importable only by the system interpreter (or a venv made
    from it with --system-site-packages); the PyPI package named ``bcc`` is something else."""
    try:
        module = importer() if importer else __import__("bcc")
    except Exception as exc:  # an ImportError, or an OSError from loading libbcc.so
        return _bcc_import_failure(exc)
    if not hasattr(module, "BPF"):
        where = getattr(module, "__file__", "?")
        return Check(
            "bcc",
            False,
            f"the `bcc` module at {where} is not the BPF Compiler Collection (PyPI's bcc?)",
            "pip uninstall bcc  # then use Debian's python3-bpfcc",
        )
    return Check("bcc", True, f"imported from {Path(getattr(module, '__file__', '?')).parent}")


def _bcc_import_failure(exc: BaseException) -> Check:
    """Tell a wrong interpreter apart from a missing package."""
    debian_bcc = SYSTEM_DIST_PACKAGES / "bcc"
    if debian_bcc.is_dir() and str(SYSTEM_DIST_PACKAGES) not in sys.path:
        return Check(
            "bcc",
            False,
            f"{sys.executable} cannot see Debian's bcc in {SYSTEM_DIST_PACKAGES}",
            f"run with {SYSTEM_PYTHON} (or a venv made by "
            f"`{SYSTEM_PYTHON} -m venv --system-site-packages`)",
        )
    if debian_bcc.is_dir():
        return Check(
            "bcc", False, f"import bcc failed: {exc}", "apt-get install --reinstall python3-bpfcc"
        )
    detail = "import bcc failed: python3-bpfcc is not installed"
    return Check("bcc", False, detail, "apt-get install python3-bpfcc")


def check_headers(
    fix: bool,
    release: str | None = None,
    modules_root: Path = MODULES_ROOT,
    src_root: Path = USR_SRC,
) -> Check:
    """bcc compiles cowtrace's BPF C at start-up against /lib/modules/$(uname -r)/build.

    Exact headers are best. On Debian, with no headers for a foreign kernel, its own
    linux-headers-*-amd64 are a safe fallback because cowtrace's BPF code only reads tracepoint
    arguments and never dereferences a kernel struct; ``fix`` creates the links.
    """
    release = release or platform.release()
    module_dir = modules_root / release
    build = module_dir / "build"
    if (build / "include").is_dir():
        target = build.resolve()
        if not is_debian_headers(target, src_root):
            return Check("kernel headers", True, f"{build} -> {target}")
        source_ok = (module_dir / "source").resolve() == common_headers_for(target)
        kind = "exact" if target.name == f"linux-headers-{release}" else "Debian fallback"
        if source_ok:
            return Check("kernel headers", True, f"{build} -> {target} ({kind})")
        headers: Path | None = target
        problem = f"{module_dir}/source does not point to {common_headers_for(target)}"
    else:
        headers = newest_debian_headers(src_root)
        problem = f"no kernel headers at {build}"
    if headers is None:
        return Check(
            "kernel headers", False, problem, f"apt-get install linux-headers-amd64 && {DOCTOR_FIX}"
        )
    if not fix or os.geteuid() != 0:
        return Check("kernel headers", False, f"{problem}; {headers} can be linked", DOCTOR_FIX)
    try:
        link_debian_headers(release, headers, modules_root)
    except (OSError, CowtraceError) as exc:
        return Check("kernel headers", False, f"linking {headers} failed: {exc}", DOCTOR_FIX)
    return Check("kernel headers", True, f"linked {build} -> {headers} (fixed)")


def check_tracepoints(events_dir: Path = TRACEFS / "events") -> Check:
    """Every tracepoint in :data:`TRACEPOINTS` must exist, or attaching fails mid-start-up."""
    try:
        if not events_dir.is_dir():
            return Check(
                "tracepoints", False, f"{events_dir} missing (tracefs not mounted?)", DOCTOR_FIX
            )
        missing = [name for name in TRACEPOINTS if not (events_dir / name).is_dir()]
    except PermissionError:
        return Check("tracepoints", False, f"cannot read {events_dir}", "run cowtrace as root")
    if missing:
        return Check("tracepoints", False, f"this kernel lacks {', '.join(missing)}")
    return Check("tracepoints", True, f"all {len(TRACEPOINTS)} present")


def check_kallsyms(path: Path = KALLSYMS) -> Check:
    """cowtrace tells copies from other allocations by return addresses inside do_wp_page, so
    it needs real kernel addresses (kptr_restrict shows zeros to the unprivileged)."""
    try:
        with path.open() as lines:
            scan = scan_kallsyms(lines, KERNEL_SYMBOLS)
    except OSError as exc:
        return Check("kallsyms", False, f"cannot read {path}: {exc.strerror}", "run as root")
    if not scan.any_nonzero:
        return Check(
            "kallsyms",
            False,
            f"{path} shows only zero addresses (kernel.kptr_restrict)",
            "sysctl kernel.kptr_restrict=0  # or run as root",
        )
    missing = [name for name in KERNEL_SYMBOLS if name not in scan.addresses]
    if missing:
        return Check("kallsyms", False, f"this kernel has no {', '.join(missing)}")
    return Check("kallsyms", True, f"{', '.join(KERNEL_SYMBOLS)} found")


# --- entry points ---------------------------------------------------------------------------


def _collect(fix_mounts: bool, fix_headers: bool) -> list[Check]:
    return [
        check_root(),
        check_arch(),
        check_kernel(),
        check_btf(),
        check_mount("tracefs", "tracefs", TRACEFS, fix_mounts),
        check_mount("debugfs", "debugfs", DEBUGFS, fix_mounts),
        check_bcc(),
        check_headers(fix_headers),
        check_tracepoints(),
        check_kallsyms(),
    ]


def run_checks(fix: bool = False) -> list[Check]:
    """All host checks in order; with ``fix`` (doctor --fix) mount and link what is missing."""
    return _collect(fix_mounts=fix, fix_headers=fix)


def require_tracing_ready() -> None:
    """Raise :class:`CowtraceError` for the first failing check before any tracing starts.

    Only the harmless mounts are fixed on the way; header links change the system, so they are
    left to an explicit ``cowtrace doctor --fix``.
    """
    for check in _collect(fix_mounts=True, fix_headers=False):
        if not check.ok:
            raise CowtraceError(f"{check.name}: {check.detail}", hint=check.fix)
