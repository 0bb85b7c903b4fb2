#!/bin/bash
# In-kernel cost per copy of cowtrace's programs during the CoW storm, from the kernel's own
# accounting (kernel.bpf_stats_enabled=1: run_time_ns and run_cnt of each program), which,
# unlike wall or CPU time on a shared VM, does not move with the neighbours' load.
# Usage (root): bash bench/bpf_cost.sh [cowtrace options, e.g. --no-stacks]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -o "$work/storm" "$here/storm.c"
previous=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
coproc STORM { "$work/storm" 262144 wait; }
read -r _ready pid <&"${STORM[0]}"
"$here/../.venv/bin/python" -m cowtrace "$pid" "$@" --plain --interval 0.5 >"$work/plain" 2>&1 &
tracer=$!
until grep -q root= "$work/plain" 2>/dev/null; do sleep 0.1; done
bpftool prog show --json >"$work/before.json"
echo go >&"${STORM[1]}"
read -r line <&"${STORM[0]}"
bpftool prog show --json >"$work/after.json"
wait "$tracer"
sysctl -qw kernel.bpf_stats_enabled="$previous"
echo "child: $line"
python3 - "$work/before.json" "$work/after.json" <<'PY'
import json, sys
before = {p["id"]: p for p in json.load(open(sys.argv[1]))}
for p in json.load(open(sys.argv[2])):
    old = before.get(p["id"])
    if old is None or "run_cnt" not in p:
        continue
    calls, ns = p["run_cnt"] - old.get("run_cnt", 0), p["run_time_ns"] - old.get("run_time_ns", 0)
    if calls > 1000:  # the storm's programs (262144 copies), not other sessions' odd calls
        print(f"{p['name']:40} {calls:8} calls  {ns / 262144:6.0f} ns per copy")
PY
