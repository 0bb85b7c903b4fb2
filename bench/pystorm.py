"""A Python CoW storm: a forked child reads N pre-fork objects, one object header per page, so
each read writes a reference count and copies one page, at a chosen Python stack depth.

Usage: pystorm.py [N=20000] [DEPTH=10] [wait]   (wait: print "ready", fork after a stdin line)"""

import os
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
DEPTH = int(sys.argv[2]) if len(sys.argv) > 2 else 10
BIG = 5000


def touch(objects, depth):
    if depth > 1:
        return touch(objects, depth - 1)
    t0 = time.perf_counter()
    for _o in objects:
        pass
    return time.perf_counter() - t0


keep = [b"g" * BIG for _ in range(32)]
objects = [b""] * N
for i in range(N):
    objects[i] = bytes([i % 251]) * BIG
if "wait" in sys.argv[3:]:
    print("ready", flush=True)  # a tracer attaches now
    sys.stdin.readline()
pid = os.fork()
if pid == 0:
    elapsed = touch(objects, DEPTH)
    print(f"{elapsed * 1e3:.3f} ms", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(0.3)  # names are read from a live process of the family
