"""The exported state machine, run over the model; and proof that it catches a
broken consistency model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from livefs.kernel.livepatch import transition as tr
from livefs.kernel.tasks import TaskKind
from livefs.testing import LivepatchMachine
from livefs.testing.strategies import PatchSpec

TestLivepatchMachine = LivepatchMachine.TestCase
# the profile loaded for this run (livefs-ci unless --hypothesis-profile says otherwise)
TestLivepatchMachine.settings = settings(suppress_health_check=[HealthCheck.too_slow])


def _skipping_stack_check(klp, task):
    """A broken klp_try_switch_task: switches every task without looking."""
    task.patch_pending = False
    task.patch_state = klp.target_state
    return True


def test_explicit_sequence_catches_a_transition_that_skips_the_stack_check(monkeypatch):
    monkeypatch.setattr(tr, "klp_try_switch_task", _skipping_stack_check)
    m = LivepatchMachine()
    m.k.sched.spawn(TaskKind.KTHREAD, "stuck", m.k.vmlinux_func("lf_vm_alpha"))
    m.load_generated_patch(PatchSpec("lf_lp_0", ((None, "lf_vm_alpha"),), False))
    with pytest.raises(AssertionError, match="still in"):
        m.no_violation_at_completion()


def test_search_finds_the_broken_stack_check(monkeypatch):
    monkeypatch.setattr(tr, "klp_try_switch_task", _skipping_stack_check)
    with pytest.raises(AssertionError, match="still in"):
        run_state_machine_as_test(LivepatchMachine, settings=settings(
            max_examples=300, stateful_step_count=25, deadline=None, database=None,
            suppress_health_check=list(HealthCheck)))


def test_the_correct_model_passes_the_same_sequence():
    m = LivepatchMachine()
    m.k.sched.spawn(TaskKind.KTHREAD, "stuck", m.k.vmlinux_func("lf_vm_alpha"))
    m.load_generated_patch(PatchSpec("lf_lp_0", ((None, "lf_vm_alpha"),), False))
    m.advance(3000)
    m.no_violation_at_completion()
    assert m.k.livepatch.transition_patch is not None  # still held by the sleeper


def test_the_printed_reproducer_runs_as_it_stands(monkeypatch):
    """A failing run prints a program: its imports first, then every step with
    literal arguments.  Run as it stands (with the same broken model), it
    fails the same way."""
    monkeypatch.setattr(tr, "klp_try_switch_task", _skipping_stack_check)
    with pytest.raises(AssertionError, match="still in") as failure:
        run_state_machine_as_test(LivepatchMachine, settings=settings(
            max_examples=300, stateful_step_count=25, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck)))
    notes = "\n".join(getattr(failure.value, "__notes__", []))
    program = notes[notes.index("from livefs.testing.machine import LivepatchMachine"):]
    program = program[:program.index("state.teardown()") + len("state.teardown()")]  # hypothesis's comments follow
    assert program.splitlines()[2] == "state = LivepatchMachine()"
    assert "data(" not in program
    with pytest.raises(AssertionError, match="still in"):
        exec(compile(program, "<reproducer>", "exec"), {})
