"""Count cowtrace's events inside an address range, per process and kind.

python array_copies.py events.jsonl START END
"""

from __future__ import annotations

import json
import sys
from collections import Counter


def main() -> int:
    path, start, end = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
    counts: Counter = Counter()
    with open(path) as lines:
        for line in lines:
            event = json.loads(line)
            if event["addr"] is not None and start <= event["addr"] < end:
                counts[(event["pid"], event["kind"])] += 1
    for (pid, kind), n in sorted(counts.items()):
        print(f"pid {pid}: {n} {kind}")
    if not counts:
        print("no events in the range")
    return 0


if __name__ == "__main__":
    sys.exit(main())
