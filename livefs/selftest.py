"""``livefs selftest DIR``: run a directory of kselftest-style scripts, each in
its own ``livefs run``, and report in KTAP like the kselftest runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

KSFT_SKIP = 4
# the upstream Makefile's TEST_PROGS order; others follow alphabetically
UPSTREAM_ORDER = ["test-livepatch.sh", "test-callbacks.sh", "test-shadow-vars.sh", "test-state.sh",
                  "test-ftrace.sh", "test-sysfs.sh", "test-syscall.sh", "test-kprobe.sh"]


def scripts_in(directory: Path) -> list[Path]:
    found = {p.name: p for p in directory.glob("test-*.sh") if p.is_file()}
    ordered = [found.pop(n) for n in UPSTREAM_ORDER if n in found]
    return ordered + [found[n] for n in sorted(found)]


def script_run_args(script: Path) -> list[str]:
    """The ``livefs run`` options a script asks for in a ``# livefs run: …``
    line (``--cpus 2`` for a test that needs a second model CPU); they come
    after the runner's own, so they win."""
    for line in script.read_text(errors="replace").splitlines():
        if line.startswith("# livefs run:"):
            return line.split(":", 1)[1].split()
    return []


def _run_one(script: Path, run_args: list[str], timeout: float, out: TextIO) -> tuple[int | None, float]:
    """Run one script, echoing its output as KTAP comments; None on timeout."""
    cmd = [sys.executable, "-m", "livefs", "run", *run_args, *script_run_args(script), "--", f"./{script.name}"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=script.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    assert proc.stdout is not None

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            out.write(f"# {line.rstrip(chr(10))}\n")
            out.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    rc: int | None
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
        os.killpg(proc.pid, signal.SIGTERM)  # livefs run unmounts on SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    return rc, time.monotonic() - start


class SelftestError(Exception):
    pass


def select_scripts(directory: Path, only: list[str] | None = None) -> list[Path]:
    """The scripts to run, in order; every name in ``only`` must exist."""
    scripts = scripts_in(directory)
    if only:
        names = {s.name for s in scripts}
        missing = [n for n in only if n not in names]
        if missing:
            raise SelftestError(f"{directory}: no such test script: {', '.join(missing)}")
        scripts = [s for s in scripts if s.name in only]
    return scripts


def run_selftests(directory: Path, run_args: list[str], timeout: float, out: TextIO = sys.stdout,
                  only: list[str] | None = None) -> int:
    scripts = select_scripts(directory, only)
    out.write("TAP version 13\n")
    if not scripts:
        out.write("1..0 # SKIP no tests\n")
        return 0
    out.write(f"1..{len(scripts)}\n")
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for n, script in enumerate(scripts, 1):
        name = f"selftests: livepatch: {script.name}"
        out.write(f"# {name}\n")
        out.flush()
        rc, elapsed = _run_one(script, run_args, timeout, out)
        if rc is None:
            counts["fail"] += 1
            out.write(f"not ok {n} {name} # TIMEOUT {timeout:g} seconds\n")
        elif rc == 0:
            counts["pass"] += 1
            out.write(f"ok {n} {name}\n")
        elif rc == KSFT_SKIP:
            counts["skip"] += 1
            out.write(f"ok {n} {name} # SKIP\n")
        else:
            counts["fail"] += 1
            out.write(f"not ok {n} {name} # exit={rc}\n")
        out.write(f"# {script.name}: {elapsed:.1f} s\n")
        out.flush()
    out.write(f"# Totals: pass:{counts['pass']} fail:{counts['fail']} xfail:0 xpass:0 "
              f"skip:{counts['skip']} error:0\n")
    return 1 if counts["fail"] else 0
