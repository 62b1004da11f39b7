"""pytest plugin (entry point ``pytest11: livefs``): fixtures for a model
kernel in virtual time and for a live mount, and the hypothesis profiles.

Profiles: ``livefs-ci`` (short, for every CI run) and ``livefs-thorough``
(long runs); pick one with ``--hypothesis-profile`` or
``settings.load_profile``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from livefs.kernel.kernel import Kernel

# CI: the same examples on every run (derandomize, no database), so that a red
# or green CI is never chance; thorough: random, long, for hunting
settings.register_profile("livefs-ci", max_examples=100, stateful_step_count=30, deadline=None,
                          derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("livefs-thorough", max_examples=2000, stateful_step_count=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def livefs_kernel() -> Kernel:
    """A fresh model machine in virtual time with the selftests' dynamic debug."""
    k = Kernel()
    k.dyndbg.exec_queries("file kernel/livepatch/* +p\nfunc klp_try_switch_task -p")
    return k


def fuse_problem() -> str | None:
    """Why a live mount cannot be made here, or None."""
    from livefs.runtime.mounts import fuse_device_problem
    problem = fuse_device_problem()
    if problem:
        return problem
    if os.geteuid() != 0 and shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is not installed (Debian: apt-get install fuse3)"
    return None


def require_fuse() -> None:
    """Skip the calling test where FUSE cannot work (fail instead under CI=true)."""
    problem = fuse_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"live mount impossible under CI=true: {problem}")
        pytest.skip(problem)


@pytest.fixture
def livefs_kernel_version() -> str:
    """The kernel ABI the live fixtures model; override this fixture to pick one ("6.12", "6.1")."""
    return "mainline"


@pytest.fixture
def livefs_cpus() -> int:
    """Model CPUs of the live fixtures; with one, an unblocked transition completes inside the write."""
    return 1


def _cli(*args: str, timeout: float | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livefs", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.fixture
def livefs_mount(tmp_path: Path, livefs_kernel_version: str, livefs_cpus: int) -> Iterator[Path]:
    """A live mount in a temporary directory; skipped where FUSE cannot work,
    except under CI=true, where that is an error.  Use the tool stand-ins with
    it from :func:`livefs.tools.tools_dir` and ``LIVEFS_ROOT`` set to the mount."""
    require_fuse()
    target = tmp_path / "livefs"
    target.mkdir()
    r = _cli("mount", "--kernel-version", livefs_kernel_version, "--cpus", str(livefs_cpus), str(target))
    if r.returncode != 0:
        pytest.fail(f"livefs mount {target} failed: {r.stderr.strip() or r.stdout.strip()}")
    try:
        yield target
    finally:
        _cli("umount", str(target))


@pytest.fixture
def livefs_run(livefs_kernel_version: str, livefs_cpus: int) -> Callable[..., subprocess.CompletedProcess]:
    """``livefs_run("bash", "-c", "...")``: run a command with the mock at the
    real paths (``livefs run``), rootless for a normal user; returns the
    completed process with its text output."""
    require_fuse()

    def run(*cmd: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return _cli("run", "--kernel-version", livefs_kernel_version, "--cpus", str(livefs_cpus), "--", *cmd,
                    timeout=timeout, cwd=cwd)

    return run
