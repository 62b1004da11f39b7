"""Hostile writes to every writable file of a live mount, in a process of
its own (so that a hung request fails the caller's timeout instead of
wedging pytest).  Prints one JSON object of figures.

Usage: python hostile_writer.py MOUNT SEED COUNT
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random
import sys
from pathlib import Path

# what is compared after every refused write: the model's state as files
STATE_DIRS = ("sys/kernel/livepatch", "sys/module", "proc/sys/kernel", "sys/kernel/debug/livefs",
              "sys/kernel/debug/dynamic_debug", "sys/kernel/debug/kprobes", "sys/kernel/tracing")
# files whose bytes move on their own: the trace buffer (our own writes are
# traced), the staged-task list (our own process is a task), streams that block,
# the kernel's log as syslog(2) reads it (a refusal may log, as the kernel's do)
UNSTABLE = {"trace", "trace_pipe", "tasks", "kmsg", "transitions.json", "syslog"}  # transitions.json: the model clock
SIZES = (0, 1, 2, 7, 64, 4095, 4096, 4097, 70_000)


def writable_files(mount: Path) -> list[Path]:
    out = []
    for top in ("sys", "proc", "dev"):
        for dirpath, dirnames, filenames in os.walk(mount / top):
            dirnames[:] = [d for d in dirnames if d != "overlay"]
            for name in filenames:
                path = Path(dirpath) / name
                if path.stat().st_mode & 0o222:
                    out.append(path)
    return sorted(out)


def state(mount: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for top in STATE_DIRS:
        for dirpath, dirnames, filenames in os.walk(mount / top):
            rel = os.path.relpath(dirpath, mount)
            st = os.stat(dirpath)
            out[rel] = ("dir", st.st_mode, st.st_uid)
            for name in filenames:
                path = Path(dirpath) / name
                st = path.stat()
                body = path.read_bytes() if st.st_mode & 0o444 and name not in UNSTABLE else b""
                out[f"{rel}/{name}"] = (st.st_mode, st.st_uid, body)
    return out


def hostile_write(rng: random.Random, path: Path) -> tuple[str, int | None]:
    """One write in a random shape; (shape, errno or None)."""
    size = rng.choice(SIZES) if rng.random() < 0.3 else rng.randint(1, 64)
    data = bytes(rng.getrandbits(8) for _ in range(size))
    if path.name == "enabled" and data:
        data = b"2" + data  # never a valid value
    shape = rng.choice(("write", "pwrite", "trunc", "append", "twice"))
    flags = os.O_WRONLY | {"trunc": os.O_TRUNC, "append": os.O_APPEND}.get(shape, 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return shape, exc.errno
    try:
        if shape == "pwrite":
            os.pwrite(fd, data, rng.randint(1, 8192))
        else:
            os.write(fd, data)
            if shape == "twice":
                os.write(fd, data)
        return shape, None
    except OSError as exc:
        return shape, exc.errno
    finally:
        os.close(fd)


def main(mount: Path, seed: int, count: int) -> dict:
    rng = random.Random(seed)
    files = writable_files(mount)
    seen: collections.Counter[str] = collections.Counter()
    changed_on_failure: list[str] = []
    before = state(mount)
    tried = refused = 0
    for _ in range(count):
        path = rng.choice(files)
        if not path.exists():  # a successful write made it go (a module unloaded, a patch disabled)
            files = writable_files(mount)
            continue
        shape, err = hostile_write(rng, path)
        tried += 1
        after = state(mount)
        seen["ok" if err is None else errno.errorcode[err]] += 1
        if err is not None:
            refused += 1
            if after != before:
                diff = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                changed_on_failure.append(f"{path.relative_to(mount)} ({shape}, {errno.errorcode[err]}): {diff[:3]}")
        before = after
    return {"files": len(files), "tried": tried, "refused": refused, "errno": dict(seen),
            "changed_on_failure": changed_on_failure}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
