"""What a user of the installed package relies on: the versioned CLI, tool
stand-ins from the package, runtime directories of their own, KTAP as
kselftest prints it, and ``livefs wait``."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

import livefs
from livefs.runtime import paths
from livefs.shim import TOOLS
from livefs.tools import write_tools

import conftest
from conftest import sh


livefs_cli = functools.partial(conftest.livefs_cli, timeout=120)


def test_version():
    r = livefs_cli("--version")
    assert r.returncode == 0
    assert r.stdout == f"livefs {livefs.__version__}\n"


def test_tools_are_launchers_of_this_python(tmp_path):
    written = write_tools(tmp_path)
    assert sorted(p.name for p in written) == sorted(TOOLS)
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o755
        assert path.read_text().splitlines()[0] == f"#!{sys.executable}"
    # run from a directory where no source tree is importable
    r = subprocess.run([str(tmp_path / "modinfo"), "/nonexistent.ko"], capture_output=True, text=True,
                       cwd="/", env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 1
    assert r.stderr.strip() == "modinfo: ERROR: Module /nonexistent.ko not found."


def test_runtime_dir_follows_xdg_and_refuses_shared_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv("LIVEFS_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == tmp_path / "livefs"
    assert paths.mountpoints_dir() == tmp_path / "livefs" / "mnt"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("LIVEFS_STATE_DIR", str(shared))
    with pytest.raises(paths.PathError, match="writable by others"):
        paths.runtime_dir()


def test_stale_run_directories_are_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEFS_STATE_DIR", str(tmp_path))
    mnt = paths.mountpoints_dir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (mnt / f"run-{dead.pid}-abc" / "mnt").mkdir(parents=True)
    (mnt / f"run-{os.getpid()}-def").mkdir()
    paths.sweep_stale_runs()
    assert sorted(p.name for p in mnt.iterdir()) == [f"run-{os.getpid()}-def"]


def test_selftest_prints_tap_first(tmp_path):
    r = livefs_cli("selftest", str(tmp_path))
    assert r.returncode == 0
    assert r.stdout == "TAP version 13\n1..0 # SKIP no tests\n"
    assert "wrote module stand-ins" in r.stderr


def test_selftest_refuses_unknown_test_and_bad_timeout(tmp_path):
    r = livefs_cli("selftest", "-t", "test-nope.sh", str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.strip() == f"livefs: {tmp_path}: no such test script: test-nope.sh"
    r = livefs_cli("selftest", "--timeout", "-3", str(tmp_path))
    assert r.returncode == 2 and "must be more than 0 seconds" in r.stderr


def test_selftest_runs_only_the_named_script(require_fuse, tmp_path):
    (tmp_path / "test-a.sh").write_text("#!/bin/bash\necho ran-a\n")
    (tmp_path / "test-b.sh").write_text("#!/bin/bash\necho ran-b\nexit 4\n")
    for s in ("test-a.sh", "test-b.sh"):
        (tmp_path / s).chmod(0o755)
    r = livefs_cli("selftest", "-t", "test-b.sh", str(tmp_path))
    lines = r.stdout.splitlines()
    assert lines[:4] == ["TAP version 13", "1..1", "# selftests: livepatch: test-b.sh", "# ran-b"]
    assert "ok 1 selftests: livepatch: test-b.sh # SKIP" in lines
    assert "ran-a" not in r.stdout


def test_wait_returns_at_once_without_transition_and_times_out_on_a_stall(mnt):
    env = {"LIVEFS_ROOT": str(mnt)}
    assert livefs_cli("wait", "--mount", str(mnt), "--timeout", "5").returncode == 0
    mods = mnt.parent / "mods"
    assert livefs_cli("modules", "export", str(mods), "test_klp_livepatch").returncode == 0
    tasks = mnt / "sys/kernel/debug/livefs/tasks"
    tasks.write_text("spawn kthread sleeper cmdline_proc_show\n")
    from livefs.tools import tools_dir
    r = sh(f"{tools_dir()}/insmod {mods}/test_klp_livepatch.ko", env=env)
    assert r.returncode == 0, r.stderr
    r = livefs_cli("wait", "--mount", str(mnt), "--timeout", "0.5")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "livefs wait: transition still in progress after 0.5 s"
    assert "sleeper" in r.stderr and "cmdline_proc_show" in r.stderr
