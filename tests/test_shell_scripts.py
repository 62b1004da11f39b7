"""Our kselftest-style scripts, run under `livefs run` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from livefs.selftest import script_run_args

from conftest import REPO, mount_table

SCRIPTS = sorted((REPO / "tests" / "shell").glob("test-*.sh"))
RELEASE = os.uname().release
# the host paths `livefs run` lays the mock over (namespace.BINDS, /proc, the
# module build directory it provides): their mount-table entries must be the
# same before and after a run
LAID_OVER = ("/sys/kernel", "/sys/module", "/dev/kmsg", "/proc", f"/lib/modules/{RELEASE}", "/lib/modules", "/lib")


def host_entries(private: Path) -> list[tuple[str, str, str, str]]:
    """Mount-table entries at or below the laid-over paths and the run's own
    state directory (a private one, so other mounts of this host do not count)."""
    paths = (*LAID_OVER, str(private))
    return [m for m in mount_table() if any(m[1] == p or m[1].startswith(p + "/") for p in paths)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("selftest")
    subprocess.run([sys.executable, "-m", "livefs", "modules", "export", str(d / "test_modules")],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "livefs", "modules", "helpers", str(d)], check=True, capture_output=True)
    return d


# the host's own tool directories, and where the livefs command itself is
REAL_TOOLS_PATH = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.parametrize("own_tools", [False, True], ids=["stand-ins", "hosts-own-tools"])
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_passes_under_livefs_run(require_fuse, workdir, script, own_tools):
    """Each script with only the host's own tools (kmod's insmod, rmmod,
    modinfo, modprobe and util-linux's dmesg, reaching the model through
    their syscalls: what livefs run gives where seccomp can hand them over),
    and with the kmod and dmesg stand-ins first on PATH (what it gives
    elsewhere)."""
    if own_tools:
        path = ["env", f"PATH={REAL_TOOLS_PATH}"]
    else:
        stand_ins = workdir / "stand-ins"
        if not stand_ins.exists():
            assert subprocess.run([sys.executable, "-m", "livefs", "tools", str(stand_ins)],
                                  capture_output=True).returncode == 0
        path = ["env", f"PATH={stand_ins}:{REAL_TOOLS_PATH}"]
    r = subprocess.run([sys.executable, "-m", "livefs", "run", *script_run_args(script), "--", *path, str(script)],
                       cwd=workdir, capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stdout.splitlines() if line.startswith("TEST:")]
    if r.returncode == 4:  # the kselftest skip code: say why, visibly (under CI=true lib.sh fails instead)
        pytest.skip(f"{script.name}: {r.stdout.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines, "the script ran no test"
    assert all(line.endswith(" ... ok") for line in lines), r.stdout + r.stderr


def test_run_leaves_host_untouched(require_fuse, workdir, tmp_path):
    """Inside the run the mock is at the real paths (and the module build
    directory exists); afterwards the host's entries at those paths are
    exactly as before, no livefs mount is left, and the build directory
    exists on the host only if it did before."""
    build = Path(f"/lib/modules/{RELEASE}/build")
    private = tmp_path / "state"
    private.mkdir(mode=0o700)
    before, had_build = host_entries(private), os.path.lexists(build)
    sys_kernel = sorted(p.name for p in Path("/sys/kernel").iterdir())
    r = subprocess.run([sys.executable, "-m", "livefs", "run", "--", "bash", "-c",
                        f"ls /sys/kernel/livepatch && ls -d {build} && "
                        "awk '$2 == \"/sys/kernel\" && $3 == \"fuse.livefs\"' /proc/self/mounts"],
                       cwd=workdir, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, LIVEFS_STATE_DIR=str(private)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split()[1:3] == ["/sys/kernel", "fuse.livefs"], r.stdout
    assert host_entries(private) == before
    assert sorted(p.name for p in Path("/sys/kernel").iterdir()) == sys_kernel
    assert os.path.lexists(build) == had_build


def test_run_propagates_exit_status(require_fuse, workdir):
    r = subprocess.run([sys.executable, "-m", "livefs", "run", "--", "bash", "-c", "exit 7"],
                       cwd=workdir, capture_output=True, text=True, timeout=60)
    assert r.returncode == 7
