"""A user's own project, tested against an installed livefs: the plugin's
fixtures (found through the pytest11 entry point, no conftest) and a
state machine of its own built on LivepatchMachine.  CI runs it from the
wheel, outside the checkout, as root and as a normal user."""

from __future__ import annotations

import os
import subprocess

from hypothesis import settings
from hypothesis.stateful import invariant

from livefs.testing import LivepatchMachine
from livefs.tools import tools_dir


class MyMachine(LivepatchMachine):
    """Adds one invariant of the user's: at most one patch in transition, read from sysfs terms."""

    @invariant()
    def transition_patch_is_enabled_or_reverting(self) -> None:
        patch = self.k.livepatch.transition_patch
        assert patch is None or patch in self.k.livepatch.sysfs_patches


TestMyMachine = MyMachine.TestCase
TestMyMachine.settings = settings(max_examples=10, stateful_step_count=15, deadline=None)


def test_kernel_fixture(livefs_kernel):
    assert livefs_kernel.livepatch.sysfs_patches == []


def test_mount_fixture_serves_livepatch_tree(livefs_mount):
    assert (livefs_mount / "sys/kernel/livepatch").is_dir()
    assert (livefs_mount / "proc/sys/kernel/ftrace_enabled").read_text() == "1\n"


def test_insmod_through_the_mount(livefs_mount, tmp_path):
    env = dict(os.environ, LIVEFS_ROOT=str(livefs_mount), PATH=f"{tools_dir()}:{os.environ['PATH']}")
    subprocess.run(["livefs", "modules", "export", str(tmp_path), "test_klp_livepatch"], check=True,
                   capture_output=True)
    r = subprocess.run(["insmod", str(tmp_path / "test_klp_livepatch.ko")], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    enabled = livefs_mount / "sys/kernel/livepatch/test_klp_livepatch/enabled"
    assert enabled.read_text() == "1\n"


def test_run_fixture_at_the_real_paths(livefs_run):
    r = livefs_run("bash", "-c", "echo abc > /proc/sys/kernel/ftrace_enabled; echo rc=$?; "
                   "cat /proc/self/patch_state")
    assert r.returncode == 0, r.stderr
    assert "write error: Invalid argument" in r.stderr
    assert r.stdout.splitlines() == ["rc=1", "-1"]
