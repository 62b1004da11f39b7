"""The differential state machine: live mount with real shell commands against
a pure model twin, with the short profile."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from livefs.testing.live import LiveTwinMachine


def test_live_mount_matches_model_twin(livefs_mount, tmp_path):
    modules = tmp_path / "test_modules"
    subprocess.run([sys.executable, "-m", "livefs", "modules", "export", str(modules)], check=True,
                   capture_output=True)
    LiveTwinMachine.mount, LiveTwinMachine.modules = livefs_mount, modules
    try:
        run_state_machine_as_test(LiveTwinMachine, settings=settings(
            max_examples=8, stateful_step_count=15, deadline=None, database=None))
    finally:
        LiveTwinMachine.mount = LiveTwinMachine.modules = None
