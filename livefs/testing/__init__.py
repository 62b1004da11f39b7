"""Public test API: the livepatch state machine, strategies, and a pytest plugin."""

from .machine import LivepatchMachine
from .strategies import PatchSpec, TaskSpec, patch_specs, target_module, task_specs

__all__ = ["LivepatchMachine", "PatchSpec", "TaskSpec", "patch_specs", "target_module", "task_specs"]
