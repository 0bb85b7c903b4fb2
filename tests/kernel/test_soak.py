"""The agent under fast worker churn for two minutes does not grow (bench/soak.py, short).

Two workers recycled about five times a second each (the issue's gunicorn recycled two a
second in all) and a short family every 20 s.  Before the fix the agent grew about 70 KiB per
exited worker (per-pid writer flags, symbol caches, names): ~40 MiB a minute at this churn
(85 MiB/min measured at twice the churn), and its stack maps gained the stacks of every
family.  After a 40 s warm-up (pid labels live
10 s after exit, so the tables reach their steady size first) the least-squares RSS slope over
the remaining 80 s must stay under 20 MiB/min: the leak measured trips it twofold,
while the largest step seen without a leak (a new family's symbol caches, ~20 MiB, once)
moves it by at most ~15 (1.5 x step / window).  The kernel's stack maps must end no higher than
the first half's peak plus a margin; the other maps, the series and the fds within twice it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOAK_PATH = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
spec = importlib.util.spec_from_file_location("cowtrace_bench_soak", SOAK_PATH)
assert spec is not None and spec.loader is not None
soak = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(soak)

WARMUP_S = 40.0
SLOPE_LIMIT_MIB_PER_MIN = 20.0


def test_agent_does_not_grow_under_worker_churn(tmp_path: Path) -> None:
    config = soak.SoakConfig(
        duration_s=120.0,
        warmup_s=WARMUP_S,
        sample_s=5.0,
        workers=2,
        life_s=0.2,
        family_every_s=20.0,
        family_life_s=12.0,
        grace_s=10.0,
        interval_s=2.0,
        name="cowsoaktest",
    )
    samples = soak.run(config, tmp_path / "agent.log", log=False)
    soak.write_csv(samples, tmp_path / "soak.csv")
    table = (tmp_path / "soak.csv").read_text()
    slope = soak.rss_slope_mib_per_min(samples, WARMUP_S)
    assert slope < SLOPE_LIMIT_MIB_PER_MIN, f"RSS grows {slope:.1f} MiB/min:\n{table}"
    after = [s for s in samples if s.t >= WARMUP_S]
    assert len(after) >= 12, table
    half = after[: len(after) // 2]
    end = after[-1]

    def stacks(sample) -> int:  # noqa: ANN001
        return sample.maps.get("fault_stacks", 0) + sample.maps.get("user_stacks", 0)

    # Stack maps: each new family brought ~150 stacks that stayed; members, series and fds
    # follow how many workers are within their grace at that moment (it varies with load).
    assert stacks(end) <= 1.2 * max(stacks(s) for s in half) + 100, table
    assert end.map_total <= 2 * max(s.map_total for s in half) + 200, table
    assert end.series <= 2 * max(s.series for s in half) + 200, table
    assert end.fds <= 2 * max(s.fds for s in half), table
    assert "Traceback" not in (tmp_path / "agent.log").read_text()
