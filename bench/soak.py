"""Soak: `cowtrace agent` for a long time under worker churn, watched for growth.

A long-lived pre-fork family (bench/churn.py: workers recycled several times a second, like
gunicorn `--max-requests` under load) plus short families started one after another (each
lives `--family-life` seconds, so families begin and end all the time), all found by the
agent's `--comm`.  Every `--sample` seconds it records the agent's RSS and open fds, the
entries of each of the agent's kernel maps (counted with BPF_MAP_GET_NEXT_KEY on a copy of the
agent's own map fds, pidfd_getfd), the series and pid labels of its /metrics, and the copied
pages it left unexamined for Python types (`--types-budget`: its --python-types-budget, the
share of wall time it may spend on them; column `over_budget`).  It writes
soak.csv and soak.svg into `--out`, prints the figures, and exits non-zero when a pass
criterion fails:

- RSS at the end within 10% of its value at the end of the warm-up (`--warmup`, 5 min);
- open fds, map entries and series bounded: none ends more than 10% (and a little slack)
  above its highest value during the first half after the warm-up.

    sudo .venv/bin/python bench/soak.py --duration 3600 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHURN = HERE / "churn.py"
COMM = "cowsoak"

# ---- the agent's kernel maps ------------------------------------------------------------------
_SYS_BPF = 321
_SYS_PIDFD_GETFD = 438
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_OBJ_GET_INFO_BY_FD = 15
# Map types whose entries come and go (hash, lru_hash, stack_trace); arrays, rings and program
# arrays have a fixed size.
_COUNTED_TYPES = {1, 7, 9}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    return _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))


def _map_info(fd: int) -> tuple[int, int, str]:
    """(type, key size, name) of a map fd (struct bpf_map_info's first fields)."""
    info = (ctypes.c_uint8 * 88)()
    attr = (ctypes.c_uint8 * 16)()
    ctypes.c_uint32.from_buffer(attr, 0).value = fd
    ctypes.c_uint32.from_buffer(attr, 4).value = len(info)
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
    if _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr) != 0:
        raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
    kind = ctypes.c_uint32.from_buffer(info, 0).value
    key_size = ctypes.c_uint32.from_buffer(info, 8).value
    name = bytes(info[24:40]).split(b"\0", 1)[0].decode()
    return kind, key_size, name


def _count_keys(fd: int, key_size: int) -> int:
    """Entries of a map: walk its keys with BPF_MAP_GET_NEXT_KEY."""
    key = (ctypes.c_uint8 * key_size)()
    nxt = (ctypes.c_uint8 * key_size)()
    attr = (ctypes.c_uint8 * 32)()
    ctypes.c_uint32.from_buffer(attr, 0).value = fd
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(nxt)
    count = 0
    first = True
    while True:
        # first call: key NULL gives the first key
        ctypes.c_uint64.from_buffer(attr, 8).value = 0 if first else ctypes.addressof(key)
        if _bpf(_BPF_MAP_GET_NEXT_KEY, attr) != 0:
            return count
        count += 1
        first = False
        ctypes.memmove(key, nxt, key_size)


def map_entries(pid: int) -> dict[str, int]:
    """Entries of every hash-like map the process `pid` holds, by map name."""
    pidfd = os.pidfd_open(pid)
    out: dict[str, int] = {}
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if target != "anon_inode:bpf-map":
                continue
            fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            try:
                kind, key_size, map_name = _map_info(fd)
                if kind in _COUNTED_TYPES:
                    out[map_name] = out.get(map_name, 0) + _count_keys(fd, key_size)
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return out


# ---- the agent's own figures -------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_PID_LABEL = re.compile(r'pid="(\d+)"')


def scrape(port: int, timeout: float = 60.0) -> tuple[int, int, int, int]:
    """(series, distinct pid labels, families, copied pages not examined for Python types) of
    the agent's /metrics.  Patient: on a loaded machine a scrape of thousands of series can
    take seconds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        text = reply.read().decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    pids = {m.group(1) for line in samples for m in [_PID_LABEL.search(line)] if m}
    def value(name: str) -> int:
        return next((int(float(s.split()[-1])) for s in samples if s.startswith(f"{name} ")), 0)

    over_budget = value("cowtrace_python_type_pages_over_budget_total")
    return len(samples), len(pids), value("cowtrace_families"), over_budget


# ---- the run -------------------------------------------------------------------------------------
def _flag(default: Any, flag: str, help_text: str | None = None) -> Any:
    """A SoakConfig field that ``flag`` sets on soak.py's command line (main())."""
    return field(default=default, metadata={"flag": flag, "help": help_text})


@dataclass
class SoakConfig:
    """One soak. The fields made with _flag are the command line, type and default included."""

    duration_s: float = _flag(3600.0, "--duration", "seconds (default 1 h)")
    warmup_s: float = _flag(300.0, "--warmup", "seconds before judging")
    sample_s: float = _flag(30.0, "--sample", "seconds between samples")
    workers: int = _flag(2, "--workers")
    life_s: float = _flag(0.5, "--life", "seconds a worker lives")  # 2 workers: ~4 recycles/s
    records: int = 20000
    family_every_s: float = _flag(60.0, "--family-every")  # a short family this often (0: none)
    family_life_s: float = _flag(30.0, "--family-life")
    grace_s: float = _flag(30.0, "--grace", "agent --pid-label-grace")
    interval_s: float = 5.0  # the agent's --interval
    port: int = _flag(0, "--port", "the agent's (0: a free one)")
    # distinct per concurrent soak: each agent follows its own comm
    name: str = _flag(COMM, "--name", "the workload's comm (--comm of the agent)")
    python: str = sys.executable
    types_budget: str | None = _flag(
        None, "--types-budget", "the agent's --python-types-budget (SHARE|none; default: its own)"
    )


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    series: int
    pid_labels: int
    families: int
    maps: dict[str, int] = field(default_factory=dict)
    over_budget: int = 0  # copied pages the agent left unexamined for Python types, so far

    @property
    def map_total(self) -> int:
        return sum(self.maps.values())


def _churn(config: SoakConfig, family_life_s: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "/usr/bin/python3",
            str(CHURN),
            "--workers",
            str(config.workers),
            "--life",
            str(config.life_s),
            "--records",
            str(config.records),
            "--name",
            config.name,
            "--family-life",
            str(family_life_s),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(agent: subprocess.Popen, port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode} before it was ready")
        with contextlib.suppress(OSError):
            if scrape(port, timeout=10)[2] >= 1:  # the long-lived family is traced
                return
        time.sleep(0.5)
    raise RuntimeError("the agent did not start tracing in time")


def run(config: SoakConfig, log_path: Path, log: bool = True) -> list[Sample]:
    """Run the soak; the samples, taken every `sample_s` from the agent's readiness on.
    The agent's own log (stderr) goes to `log_path`."""
    samples: list[Sample] = []
    agent_log = log_path.open("w")
    if config.port == 0:
        config.port = _free_port()
    procs: list[subprocess.Popen] = [_churn(config)]
    budget = [] if config.types_budget is None else ["--python-types-budget", config.types_budget]
    agent = subprocess.Popen(
        [
            config.python, "-m", "cowtrace", "agent", "--comm", f"^{config.name}$",
            "--pid-label-grace", str(config.grace_s), "--interval", str(config.interval_s),
            "--metrics-addr", f"127.0.0.1:{config.port}",
            *budget,
        ],
        cwd=ROOT,
        env={**os.environ, "COWTRACE_DEBUG": "1"},  # an internal error's traceback in the log
        stdout=subprocess.DEVNULL,
        stderr=agent_log,
    )  # fmt: skip
    try:
        _wait_ready(agent, config.port)
        start = time.monotonic()
        next_family = start + (config.family_every_s or float("inf"))
        next_sample = start
        while True:
            now = time.monotonic()
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.returncode} (see {log_path})")
            if now >= next_family:
                procs = [p for p in procs if p.poll() is None]
                procs.append(_churn(config, config.family_life_s))
                next_family += config.family_every_s
            if now >= next_sample:
                series, pids, families, over_budget = scrape(config.port)
                sample = Sample(
                    t=now - start,
                    rss_mib=rss_mib(agent.pid),
                    fds=open_fds(agent.pid),
                    series=series,
                    pid_labels=pids,
                    families=families,
                    maps=map_entries(agent.pid),
                    over_budget=over_budget,
                )
                samples.append(sample)
                if log:
                    print(
                        f"{sample.t:7.0f}s rss {sample.rss_mib:6.1f} MiB  fds {sample.fds}  "
                        f"series {series}  pids {pids}  families {families}  "
                        f"map entries {sample.map_total} {sample.maps}  "
                        f"pages over the types budget {over_budget}",
                        flush=True,
                    )
                if now - start >= config.duration_s:
                    break
                next_sample += config.sample_s
            time.sleep(max(0.0, min(next_sample, next_family) - time.monotonic()))
    finally:
        _stop(agent, signal.SIGINT, 30)
        for proc in procs:
            _stop(proc)
        agent_log.close()
    return samples


# ---- judging -------------------------------------------------------------------------------------
@dataclass
class Verdict:
    ok: bool
    lines: list[str]


def _bounded(name: str, values: list[float], slack: float) -> tuple[bool, str]:
    """The end is not above the first half's peak by more than 10% + slack."""
    half = values[: max(1, len(values) // 2)]
    peak = max(half)
    end = values[-1]
    ok = end <= peak * 1.10 + slack
    return ok, f"{name}: first-half peak {peak:g}, end {end:g}, max {max(values):g}"


def judge(samples: list[Sample], warmup_s: float) -> Verdict:
    after = [s for s in samples if s.t >= warmup_s]
    if len(after) < 3:
        return Verdict(False, ["too few samples after the warm-up"])
    base, end = after[0], after[-1]
    change = (end.rss_mib - base.rss_mib) / base.rss_mib
    rss_ok = abs(change) <= 0.10
    lines = [
        f"RSS: {base.rss_mib:.1f} MiB at {base.t:.0f} s (end of warm-up), "
        f"{end.rss_mib:.1f} MiB at {end.t:.0f} s ({100 * change:+.1f}%), "
        f"max {max(s.rss_mib for s in after):.1f} MiB"
    ]
    ok = rss_ok
    for name, values, slack in (
        ("open fds", [s.fds for s in after], 2),
        ("map entries", [s.map_total for s in after], 64),
        ("series", [s.series for s in after], 50),
    ):
        good, line = _bounded(name, values, slack)
        ok = ok and good
        lines.append(line + ("" if good else "  <- GROWS"))
    if not rss_ok:
        lines[0] += "  <- GROWS"
    return Verdict(ok, lines)


def rss_slope_mib_per_min(samples: list[Sample], since_s: float) -> float:
    """Least-squares slope of RSS over the samples from `since_s` on."""
    points = [(s.t, s.rss_mib) for s in samples if s.t >= since_s]
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
    return 60 * cov / var if var else 0.0


# ---- output --------------------------------------------------------------------------------------
def write_csv(samples: list[Sample], path: Path) -> None:
    names = sorted({name for s in samples for name in s.maps})
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            ["t_s", "rss_mib", "fds", "series", "pid_labels", "families", "over_budget",
             "map_entries", *names]
        )  # fmt: skip
        for s in samples:
            out.writerow(
                [f"{s.t:.1f}", f"{s.rss_mib:.2f}", s.fds, s.series, s.pid_labels, s.families,
                 s.over_budget, s.map_total, *(s.maps.get(name, 0) for name in names)]
            )  # fmt: skip


def _panels(samples: list[Sample]) -> Iterator[tuple[str, list[float]]]:
    yield "agent RSS (MiB)", [s.rss_mib for s in samples]
    yield "open fds", [float(s.fds) for s in samples]
    yield "kernel map entries", [float(s.map_total) for s in samples]
    yield "exported series", [float(s.series) for s in samples]


def write_svg(samples: list[Sample], path: Path, title: str) -> None:
    """Four small line charts, one per figure, over time (a plain hand-written SVG)."""
    width, panel_h, left, top = 720, 150, 70, 40
    times = [s.t for s in samples]
    t_max = max(times[-1], 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{top + 4 * (panel_h + 30)}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{title}</text>',
    ]
    plot_w = width - left - 20
    for index, (label, values) in enumerate(_panels(samples)):
        y0 = top + index * (panel_h + 30)
        lo, hi = 0.0, max(values) * 1.1 or 1.0
        points = " ".join(
            f"{left + plot_w * t / t_max:.1f},{y0 + panel_h - panel_h * (v - lo) / (hi - lo):.1f}"
            for t, v in zip(times, values, strict=True)
        )
        parts += [
            f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" '
            'stroke="#999"/>',
            f'<text x="{left + 4}" y="{y0 + 14}">{label}</text>',
            f'<text x="{left - 4}" y="{y0 + 4}" text-anchor="end">{hi:.0f}</text>',
            f'<text x="{left - 4}" y="{y0 + panel_h}" text-anchor="end">0</text>',
            f'<polyline fill="none" stroke="#c0392b" stroke-width="1.5" points="{points}"/>',
            f'<text x="{left + plot_w}" y="{y0 + panel_h + 14}" text-anchor="end">'
            f"{t_max / 60:.0f} min</text>",
        ]
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # run() stops the agent and the workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flagged = [spec for spec in fields(SoakConfig) if "flag" in spec.metadata]
    for spec in flagged:
        flag = spec.metadata["flag"]
        parser.add_argument(
            flag,
            dest=spec.name,
            metavar=flag[2:].replace("-", "_").upper(),
            type=str if spec.default is None else type(spec.default),
            default=spec.default,
            help=spec.metadata["help"],
        )
    parser.add_argument("--out", type=Path, default=Path("soak-out"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak.py: run as root (the agent loads BPF programs)", file=sys.stderr)
        return 2
    config = SoakConfig(**{spec.name: getattr(args, spec.name) for spec in flagged})
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupted)  # a background job ignores SIGINT
    samples = run(config, args.out / "agent.log")
    write_csv(samples, args.out / "soak.csv")
    verdict = judge(samples, config.warmup_s)
    slope = rss_slope_mib_per_min(samples, config.warmup_s)
    title = (
        f"cowtrace agent soak: {config.duration_s / 60:.0f} min, {config.workers} workers "
        f"living {config.life_s} s, a {config.family_life_s:.0f} s family every "
        f"{config.family_every_s:.0f} s"
    )
    write_svg(samples, args.out / "soak.svg", title)
    for line in verdict.lines:
        print(line)
    print(f"RSS slope after the warm-up: {slope:+.2f} MiB/min")
    print(f"wrote {args.out / 'soak.csv'} and {args.out / 'soak.svg'}")
    print("PASS" if verdict.ok else "FAIL")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
