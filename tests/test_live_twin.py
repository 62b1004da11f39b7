"""The differential state machine: live mount with real shell commands against
a pure model twin, with the short profile."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from livefs.testing.live import LiveTwinMachine


@pytest.fixture
def twin_machine(livefs_mount, tmp_path):
    """LiveTwinMachine set up on a live mount and exported modules."""
    modules = tmp_path / "test_modules"
    subprocess.run([sys.executable, "-m", "livefs", "modules", "export", str(modules)], check=True,
                   capture_output=True)
    LiveTwinMachine.mount, LiveTwinMachine.modules = livefs_mount, modules
    try:
        yield LiveTwinMachine
    finally:
        LiveTwinMachine.mount = LiveTwinMachine.modules = None


def test_live_mount_matches_model_twin(twin_machine):
    run_state_machine_as_test(twin_machine, settings=settings(
        max_examples=8, stateful_step_count=15, deadline=None, database=None))


def test_twin_runs_each_command_as_its_caller(twin_machine):
    """The two paths the twin once got wrong, run on purpose: a dump_stack
    names the live caller (its pid, its comm), and a late module whose
    pre-patch callback returns a positive value loads as far as kmod can tell
    (init_module(2) returns it, and kmod fails only on a negative return)."""
    m = twin_machine()
    m.insmod(name="test_klp_callbacks_demo", params="pre_patch_ret=1")
    assert any(" Comm: insmod " in r.text for r in m.twin.k.printk.records)
    m.logs_identical()
    m.trees_identical()
    m = twin_machine()
    m.insmod(name="test_klp_callbacks_demo", params="")
    m.echo_param(value="1")
    m.insmod(name="test_klp_callbacks_mod", params="")
    assert "test_klp_callbacks_mod" not in m.twin.k.modules.modules
    m.logs_identical()
    m.trees_identical()
