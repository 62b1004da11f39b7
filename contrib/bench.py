#!/usr/bin/env python3
"""Latency of livefs files against procfs, measured in one run (not a test).

Prints p50/p99 in microseconds of open+read+close and open+write+close on a
livepatch attribute and on a procfs file, and of a spawned ``cat`` of each.
Usage (with livefs installed): python contrib/bench.py [--n N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from livefs.tools import tools_dir



def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def read_once(path: str):
    def fn():
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
    return fn


def write_once(path: str, data: bytes):
    def fn():
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, data)
        os.close(fd)
    return fn


def spawn_cat(path: str):
    return lambda: subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="iterations per in-process figure")
    ap.add_argument("--spawn-n", type=int, default=200, help="iterations per spawned cat")
    args = ap.parse_args()
    mnt = Path(tempfile.mkdtemp(prefix="bench-"))
    mods = Path(tempfile.mkdtemp(prefix="bench-mods-"))
    subprocess.run([sys.executable, "-m", "livefs", "mount", str(mnt)], check=True, stdout=subprocess.DEVNULL)
    try:
        subprocess.run([sys.executable, "-m", "livefs", "modules", "export", str(mods), "test_klp_livepatch"],
                       check=True, stdout=subprocess.DEVNULL)
        env = dict(os.environ, LIVEFS_ROOT=str(mnt))
        subprocess.run([str(tools_dir() / "insmod"), str(mods / "test_klp_livepatch.ko")], env=env,
                       check=True)
        lp = mnt / "sys/kernel/livepatch/test_klp_livepatch"
        comm = Path("/proc/self/comm").read_bytes()
        rows = [
            ("open+read+close", read_once(str(lp / "enabled")), read_once("/proc/self/comm"), args.n),
            ("open+write+close", write_once(str(lp / "force"), b"0"), write_once("/proc/self/comm", comm), args.n),
            ("spawned cat", spawn_cat(str(lp / "enabled")), spawn_cat("/proc/self/stat"), args.spawn_n),
        ]
        print(f"{'operation':<18} {'livefs p50':>11} {'livefs p99':>11} {'procfs p50':>11} {'procfs p99':>11}  (µs)")
        for name, ours, theirs, n in rows:
            for fn in (ours, theirs):
                timed(fn, max(10, n // 20))  # warm up
            a, b = timed(ours, n), timed(theirs, n)
            print(f"{name:<18} {pct(a, .5):>11.1f} {pct(a, .99):>11.1f} {pct(b, .5):>11.1f} {pct(b, .99):>11.1f}")
        print(f"(livefs: {lp}/enabled and force; procfs: /proc/self/comm, /proc/self/stat for cat; "
              f"n={args.n}, spawned n={args.spawn_n}, mean livefs read "
              f"{statistics.mean(timed(read_once(str(lp / 'enabled')), 200)):.1f} µs)")
    finally:
        subprocess.run([sys.executable, "-m", "livefs", "umount", str(mnt)], check=False)
        try:
            mnt.rmdir()
        except OSError:
            pass
        subprocess.run(["rm", "-rf", str(mods)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
