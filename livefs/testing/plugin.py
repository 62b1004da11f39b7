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
from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

from livefs.kernel.kernel import Kernel

settings.register_profile("livefs-ci", max_examples=40, stateful_step_count=30, deadline=None,
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
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing"
    if shutil.which("fusermount") is None:
        return "fusermount is not installed"
    if os.geteuid() != 0:
        return "live mounts need root"
    return None


@pytest.fixture
def livefs_mount(tmp_path: Path) -> Iterator[Path]:
    """A live mount (one model CPU) in a temporary directory; skipped where FUSE
    cannot work, except under CI=true, where that is an error."""
    problem = fuse_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"live mount impossible under CI=true: {problem}")
        pytest.skip(problem)
    target = tmp_path / "livefs"
    target.mkdir()
    subprocess.run([sys.executable, "-m", "livefs", "mount", "--cpus", "1", str(target)], check=True,
                   capture_output=True)
    try:
        yield target
    finally:
        subprocess.run([sys.executable, "-m", "livefs", "umount", str(target)], capture_output=True)
