"""Our kselftest-style scripts, run under `livefs run` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "tests" / "shell").glob("test-*.sh"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("selftest")
    subprocess.run([sys.executable, "-m", "livefs", "modules", "export", str(d / "test_modules")],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "livefs", "modules", "helpers", str(d)], check=True, capture_output=True)
    return d


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_passes_under_livefs_run(require_fuse, workdir, script):
    r = subprocess.run([sys.executable, "-m", "livefs", "run", "--", str(script)], cwd=workdir,
                       capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stdout.splitlines() if line.startswith("TEST:")]
    if r.returncode == 4:  # the kselftest skip code: say why, visibly
        pytest.skip(f"{script.name}: {r.stdout.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines, "the script ran no test"
    assert all(line.endswith(" ... ok") for line in lines), r.stdout + r.stderr


def test_run_leaves_host_untouched(require_fuse, workdir):
    before = Path("/proc/self/mounts").read_text()
    sys_kernel = sorted(p.name for p in Path("/sys/kernel").iterdir())
    r = subprocess.run([sys.executable, "-m", "livefs", "run", "--", "bash", "-c",
                        "ls /sys/kernel/livepatch && ls -d /lib/modules/$(uname -r)/build && "
                        "grep -c livefs /proc/self/mounts"],
                       cwd=workdir, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.splitlines()[-1]) >= 1
    after = Path("/proc/self/mounts").read_text()
    assert [m for m in after.splitlines() if "livefs" in m] == [m for m in before.splitlines() if "livefs" in m]
    assert sorted(p.name for p in Path("/sys/kernel").iterdir()) == sys_kernel
    assert not Path(f"/lib/modules/{os.uname().release}/build").exists() or "build" in before


def test_run_propagates_exit_status(require_fuse, workdir):
    r = subprocess.run([sys.executable, "-m", "livefs", "run", "--", "bash", "-c", "exit 7"],
                       cwd=workdir, capture_output=True, text=True, timeout=60)
    assert r.returncode == 7
