"""Fidelity with a real 6.12 kernel (issue 12): what tests/transcripts/6.12
recorded, checked here on the model and through a real mount."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from livefs.tools import tools_dir

from conftest import sh

SHIMS = tools_dir()


def shim_env(mnt: Path) -> dict:
    return {"LIVEFS_ROOT": str(mnt), "PATH": f"{SHIMS}:{os.environ['PATH']}"}


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    out = tmp_path / "test_modules"
    r = sh(f"livefs modules export {out} lp_callbacks lp_cmdline lp_busy_target lp_busy")
    assert r.returncode == 0, r.stderr
    return out


# -- /proc/version: version_proc_show in vmlinux ------------------------------------------

# linux_proc_banner: "%s version %s (BY@HOST) (COMPILER) %s\n" (init/version.c)
PROC_VERSION = re.compile(r"Linux version (\S+) \(\S+@\S+\) \(.+\) (#1 .+)\n")


def test_version_proc_show_prints_the_banner_and_can_be_livepatched(machine):
    k = machine.k
    text = machine.cat("version_proc_show")
    m = PROC_VERSION.fullmatch(text)
    assert m is not None, text
    assert m.group(1) == k.utsname.release == k.version.release and m.group(2) == k.utsname.version
    # the boot log starts with linux_banner, as /dev/kmsg's first record shows
    first = k.printk.records[0]
    assert (first.seq, first.level, first.ts_ns) == (0, 5, 0) and first.text + "\n" == text
    assert machine.insmod("lp_callbacks") == 0
    k.settle()
    assert machine.cat("version_proc_show") == "LP_CALLBACKS marker: /proc/version patched by lp_callbacks\n"


def test_proc_version_is_served_by_the_model(mnt, modules):
    before = Path(f"{mnt}/proc/version").read_text()
    assert PROC_VERSION.fullmatch(before), before
    r = sh(f"insmod {modules}/lp_callbacks.ko && livefs wait --mount {mnt} && cat {mnt}/proc/version",
           env=shim_env(mnt))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "LP_CALLBACKS marker: /proc/version patched by lp_callbacks\n"
    r = sh(f"echo 0 > {mnt}/sys/kernel/livepatch/lp_callbacks/enabled && livefs wait --mount {mnt} "
           f"&& cat {mnt}/proc/version", env=shim_env(mnt))
    assert r.stdout == before

