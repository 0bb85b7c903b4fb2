"""A WSGI app with a large preloaded in-memory table, the classic gunicorn --preload set-up.

At import (in the gunicorn master, with --preload) it builds ``APP_RECORDS`` small records
(a dict of strings, a float and a list: about 590 bytes of Python objects each, measured with
CPython 3.11, so 170k records are about 100 MB and 450k about 265 MB). Each request reads
``APP_TOUCH`` records, which only *reads* them in Python terms, yet writes their reference
counts. The records read are drawn at random from the first ``APP_HOT`` share of the table
(a hot set, as a cache's popular keys). Every ``APP_COLLECT_EVERY``-th request of a worker runs
a full ``gc.collect()``, standing in for the generation-2 collections a long-running worker
makes, which write the collector's header of every tracked object.

``APP_GC_FREEZE=1`` calls ``gc.freeze()`` at the end of the import: the records move to the
permanent generation, which the collector never walks, so the workers' collections no longer
write them. Their reference counts still change.
"""

from __future__ import annotations

import gc
import os
import random

RECORDS = int(os.environ.get("APP_RECORDS", "170000"))
TOUCH = int(os.environ.get("APP_TOUCH", "200"))
HOT = float(os.environ.get("APP_HOT", "0.3"))
COLLECT_EVERY = int(os.environ.get("APP_COLLECT_EVERY", "50"))
FREEZE = os.environ.get("APP_GC_FREEZE") == "1"


def build(n: int) -> list[dict]:
    return [
        {
            "id": i,
            "name": f"user-{i:08d}",
            "email": f"user{i}@example.com",
            "score": i * 0.5,
            "tags": [f"tag-{i % 7}", f"group-{i % 13}"],
        }
        for i in range(n)
    ]


DATA = build(RECORDS)
if FREEZE:
    gc.freeze()

_served = 0


def app(environ, start_response):
    """Reads TOUCH records of the hot set; now and then a full collection."""
    global _served
    _served += 1
    hot = max(1, int(len(DATA) * HOT))
    rng = random.Random(_served)
    total = 0.0
    for _ in range(TOUCH):
        rec = DATA[rng.randrange(hot)]
        total += rec["score"] + len(rec["name"])
    if COLLECT_EVERY and _served % COLLECT_EVERY == 0:
        gc.collect()
    body = f"pid={os.getpid()} served={_served} total={total:.1f}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
