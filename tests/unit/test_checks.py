"""Unit tests for the pure parts of cowtrace.checks: no root, no particular kernel needed."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cowtrace import checks
from cowtrace.checks import Check
from cowtrace.commands import doctor as doctor_module
from cowtrace.errors import CowtraceError

STATUS = """Name:\tpython3
Umask:\t0022
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
"""


# --- capabilities -----------------------------------------------------------------------------


def test_parse_cap_eff_reads_the_effective_set() -> None:
    assert checks.parse_cap_eff(STATUS) == 0x1FFFEFFFFFF


def test_parse_cap_eff_without_the_line_is_zero() -> None:
    assert checks.parse_cap_eff("Name:\tx\n") == 0


def test_root_without_cap_sys_resource_has_everything_cowtrace_needs() -> None:
    # The project machines lack only CAP_SYS_RESOURCE (bit 24), which BPF does not need.
    assert checks.missing_capabilities(0x1FFFEFFFFFF) == []


def test_pre_5_8_capability_set_lacks_perfmon_and_bpf() -> None:
    assert checks.missing_capabilities((1 << 38) - 1) == ["CAP_PERFMON", "CAP_BPF"]


def test_no_capabilities_lacks_all() -> None:
    assert checks.missing_capabilities(0) == ["CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF"]


# --- kernel version and mounts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "expected"),
    [("6.18.44-fc-v769", (6, 18)), ("5.8.0", (5, 8)), ("4.19.0-27-amd64", (4, 19)), ("x", None)],
)
def test_parse_kernel_version(release: str, expected: tuple[int, int] | None) -> None:
    assert checks.parse_kernel_version(release) == expected


def test_old_kernel_fails_with_the_reason() -> None:
    check = checks.check_kernel("5.4.0-1-amd64")
    assert not check.ok
    assert "5.8" in check.detail


def test_parse_mounts() -> None:
    text = (
        "sysfs /sys sysfs rw 0 0\n"
        "nodev /sys/kernel/tracing tracefs rw,relatime 0 0\n"
        "tmpfs /mnt/a\\040b tmpfs rw 0 0\n"
    )
    mounts = checks.parse_mounts(text)
    assert mounts["/sys/kernel/tracing"] == "tracefs"
    assert mounts["/mnt/a b"] == "tmpfs"


def test_unmounted_tracefs_without_fix_names_the_mount_command(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("sysfs /sys sysfs rw 0 0\n")
    check = checks.check_mount("tracefs", "tracefs", Path("/sys/kernel/tracing"), False, mounts)
    assert not check.ok
    assert check.fix == "mount -t tracefs nodev /sys/kernel/tracing"


def test_mounted_tracefs_passes(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("nodev /sys/kernel/tracing tracefs rw 0 0\n")
    check = checks.check_mount("tracefs", "tracefs", Path("/sys/kernel/tracing"), False, mounts)
    assert check.ok


# --- kallsyms ---------------------------------------------------------------------------------

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff815e2d90 t do_wp_page
ffffffff815e3000 t do_wp_page.cold
ffffffff8165b880 T vma_alloc_folio_noprof
ffffffffc0001000 t exc_page_fault\t[some_module]
ffffffff821f2610 T exc_page_fault
"""


def test_scan_kallsyms_finds_exact_names_first_occurrence() -> None:
    scan = checks.scan_kallsyms(KALLSYMS.splitlines(), checks.KERNEL_SYMBOLS)
    assert scan.any_nonzero
    assert scan.addresses == {
        "do_wp_page": 0xFFFFFFFF815E2D90,
        "vma_alloc_folio_noprof": 0xFFFFFFFF8165B880,
        "exc_page_fault": 0xFFFFFFFFC0001000,
    }


def test_scan_kallsyms_sees_hidden_addresses() -> None:
    hidden = "0000000000000000 T _stext\n0000000000000000 t do_wp_page\n"
    scan = checks.scan_kallsyms(hidden.splitlines(), ["do_wp_page"])
    assert not scan.any_nonzero
    assert scan.addresses == {"do_wp_page": 0}


def test_scan_kallsyms_skips_garbage_lines() -> None:
    scan = checks.scan_kallsyms(["", "zz T do_wp_page", "1 T"], ["do_wp_page"])
    assert scan.addresses == {}


@pytest.mark.parametrize(
    ("kallsyms", "named"),
    [
        pytest.param("0000000000000000 t do_wp_page\n", ["kptr_restrict"], id="kptr_restrict"),
        pytest.param(
            "ffffffff815e2d90 t do_wp_page\n",
            ["exc_page_fault", "vma_alloc_folio_noprof"],
            id="missing_symbols",
        ),
    ],
)
def test_check_kallsyms_says_why_it_fails(tmp_path: Path, kallsyms: str, named: list[str]) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(kallsyms)
    check = checks.check_kallsyms(path)
    assert not check.ok
    assert all(word in check.detail for word in named), check.detail


def test_check_kallsyms_passes(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS)
    assert checks.check_kallsyms(path).ok


# --- tracepoints ------------------------------------------------------------------------------


def test_tracepoints_all_present(tmp_path: Path) -> None:
    for name in checks.TRACEPOINTS:
        (tmp_path / name).mkdir(parents=True)
    assert checks.check_tracepoints(tmp_path).ok


def test_tracepoints_missing_are_named(tmp_path: Path) -> None:
    for name in checks.TRACEPOINTS[1:]:
        (tmp_path / name).mkdir(parents=True)
    check = checks.check_tracepoints(tmp_path)
    assert not check.ok
    assert checks.TRACEPOINTS[0] in check.detail


def test_tracepoints_without_tracefs(tmp_path: Path) -> None:
    check = checks.check_tracepoints(tmp_path / "events")
    assert not check.ok
    assert check.fix == checks.DOCTOR_FIX


# --- kernel headers ---------------------------------------------------------------------------


def _debian_headers(src: Path, version: str, common: bool = True) -> Path:
    headers = src / f"linux-headers-{version}-amd64"
    (headers / "include").mkdir(parents=True)
    if common:
        (src / f"linux-headers-{version}-common" / "include").mkdir(parents=True)
    return headers


def test_newest_headers_sort_by_number_not_text(tmp_path: Path) -> None:
    _debian_headers(tmp_path, "6.1.0-9")
    newest = _debian_headers(tmp_path, "6.1.0-56")
    _debian_headers(tmp_path, "6.1.0-99", common=False)  # half-removed: unusable
    assert checks.newest_debian_headers(tmp_path) == newest


def test_newest_headers_none_installed(tmp_path: Path) -> None:
    assert checks.newest_debian_headers(tmp_path) is None


def test_common_headers_for() -> None:
    path = Path("/usr/src/linux-headers-6.1.0-56-amd64")
    assert checks.common_headers_for(path) == Path("/usr/src/linux-headers-6.1.0-56-common")


def test_is_debian_headers() -> None:
    assert checks.is_debian_headers(Path("/usr/src/linux-headers-6.1.0-56-amd64"))
    assert not checks.is_debian_headers(Path("/usr/src/linux-headers-6.1.0-56-common"))
    assert not checks.is_debian_headers(Path("/home/me/linux"))


def test_link_debian_headers_creates_and_repoints(tmp_path: Path) -> None:
    src, modules = tmp_path / "src", tmp_path / "modules"
    old = _debian_headers(src, "6.1.0-9")
    new = _debian_headers(src, "6.1.0-56")
    checks.link_debian_headers("6.18.0-x", old, modules)
    checks.link_debian_headers("6.18.0-x", new, modules)
    checks.link_debian_headers("6.18.0-x", new, modules)  # idempotent
    assert (modules / "6.18.0-x" / "build").readlink() == new
    assert (modules / "6.18.0-x" / "source").readlink() == checks.common_headers_for(new)


def test_link_debian_headers_leaves_a_real_tree_alone(tmp_path: Path) -> None:
    headers = _debian_headers(tmp_path / "src", "6.1.0-56")
    (tmp_path / "modules" / "6.18.0-x" / "build").mkdir(parents=True)
    with pytest.raises(CowtraceError):
        checks.link_debian_headers("6.18.0-x", headers, tmp_path / "modules")


def test_headers_missing_and_none_installed(tmp_path: Path) -> None:
    check = checks.check_headers(False, "6.18.0-x", tmp_path / "modules", tmp_path / "src")
    assert not check.ok
    assert check.fix == f"apt-get install linux-headers-amd64 && {checks.DOCTOR_FIX}"


def test_headers_installed_but_unlinked_suggests_doctor_fix(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _debian_headers(src, "6.1.0-56")
    check = checks.check_headers(False, "6.18.0-x", tmp_path / "modules", src)
    assert not check.ok
    assert check.fix == checks.DOCTOR_FIX


def test_headers_fix_links_then_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks.os, "geteuid", lambda: 0)
    src, modules = tmp_path / "src", tmp_path / "modules"
    headers = _debian_headers(src, "6.1.0-56")
    fixed = checks.check_headers(True, "6.18.0-x", modules, src)
    assert fixed.ok
    assert "fixed" in fixed.detail
    assert (modules / "6.18.0-x" / "build").resolve() == headers
    again = checks.check_headers(False, "6.18.0-x", modules, src)
    assert again.ok
    assert "Debian fallback" in again.detail


def test_headers_fallback_without_source_link_fails(tmp_path: Path) -> None:
    src, modules = tmp_path / "src", tmp_path / "modules"
    headers = _debian_headers(src, "6.1.0-56")
    (modules / "6.18.0-x").mkdir(parents=True)
    (modules / "6.18.0-x" / "build").symlink_to(headers)
    check = checks.check_headers(False, "6.18.0-x", modules, src)
    assert not check.ok
    assert "source" in check.detail


def test_headers_own_tree_passes(tmp_path: Path) -> None:
    (tmp_path / "modules" / "6.18.0-x" / "build" / "include").mkdir(parents=True)
    assert checks.check_headers(False, "6.18.0-x", tmp_path / "modules", tmp_path / "src").ok


# --- bcc --------------------------------------------------------------------------------------


def _fail_import() -> object:
    raise ImportError("No module named 'bcc'")


def test_bcc_wrong_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bcc").mkdir()
    monkeypatch.setattr(checks, "SYSTEM_DIST_PACKAGES", tmp_path)
    check = checks.check_bcc(_fail_import)
    assert not check.ok
    assert check.fix is not None
    assert "/usr/bin/python3" in check.fix


def test_bcc_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "SYSTEM_DIST_PACKAGES", tmp_path)
    check = checks.check_bcc(_fail_import)
    assert not check.ok
    assert check.fix == "apt-get install python3-bpfcc"


def test_bcc_broken_on_the_right_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bcc").mkdir()
    monkeypatch.setattr(checks, "SYSTEM_DIST_PACKAGES", tmp_path)
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    check = checks.check_bcc(_fail_import)
    assert not check.ok
    assert "python3-bpfcc" in (check.fix or "")


def test_pypi_bcc_impostor_is_refused() -> None:
    check = checks.check_bcc(lambda: object())
    assert not check.ok
    assert "not the BPF Compiler Collection" in check.detail


# --- entry points -----------------------------------------------------------------------------


def test_require_tracing_ready_raises_first_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    results = [
        Check("root", True, "ok"),
        Check("tracefs", False, "not mounted at /sys/kernel/tracing", "mount ..."),
        Check("kallsyms", False, "later problem"),
    ]
    seen: dict[str, bool] = {}

    def fake_collect(fix_mounts: bool, fix_headers: bool) -> list[Check]:
        seen.update(fix_mounts=fix_mounts, fix_headers=fix_headers)
        return results

    monkeypatch.setattr(checks, "_collect", fake_collect)
    with pytest.raises(CowtraceError) as excinfo:
        checks.require_tracing_ready()
    assert excinfo.value.message == "tracefs: not mounted at /sys/kernel/tracing"
    assert excinfo.value.hint == "mount ..."
    assert seen == {"fix_mounts": True, "fix_headers": False}


def test_doctor_prints_each_check_and_counts_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        doctor_module,
        "run_checks",
        lambda fix: [Check("root", True, "euid 0"), Check("BTF", False, "missing", "boot")],
    )
    out = io.StringIO()
    assert doctor_module.doctor(False, Console(file=out, width=200)) == 1
    text = out.getvalue()
    assert "✓ root: euid 0" in text
    assert "✗ BTF: missing" in text
    assert "fix: boot" in text
    assert "1 problem(s): BTF" in text


def test_doctor_all_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_module, "run_checks", lambda fix: [Check("root", True, "euid 0")])
    out = io.StringIO()
    assert doctor_module.doctor(False, Console(file=out)) == 0
    assert "cowtrace can trace on this host" in out.getvalue()


def _status(tmp_path: Path, cap_eff: int) -> Path:
    path = tmp_path / "status"
    path.write_text(f"Name:\tcowtrace\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff:016x}\n")
    return path


BPF_CAPS = 1 << 21 | 1 << 38 | 1 << 39  # CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF


def test_non_root_with_the_bpf_capabilities_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checks.os, "geteuid", lambda: 998)
    check = checks.check_root(_status(tmp_path, BPF_CAPS))
    assert check.ok
    assert check.detail == "uid 998 with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"


def test_non_root_without_capabilities_says_not_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checks.os, "geteuid", lambda: 65534)
    check = checks.check_root(_status(tmp_path, 0))
    assert not check.ok
    assert check.detail == (
        "running as uid 65534 (not root); CapEff 0x0 lacks CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF"
    )


def test_root_lacking_one_capability_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checks.os, "geteuid", lambda: 0)
    check = checks.check_root(_status(tmp_path, BPF_CAPS & ~(1 << 39)))
    assert not check.ok
    assert check.detail.endswith("lacks CAP_BPF")
    assert check.detail.startswith("running as root;")
