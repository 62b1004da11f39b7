"""The exported state machine, run over the model; and proof that it catches a
broken consistency model."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from livefs.kernel.kernel import Kernel
from livefs.kernel.livepatch import core, transition as tr
from livefs.kernel.livepatch import patch as lp_patch
from livefs.kernel.tasks import KLP_UNPATCHED, TaskKind
from livefs.kernel.version import KernelVersion
from livefs.testing import LivepatchMachine
from livefs.testing import machine as machine_mod
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


def _stack_check_against_the_original(klp):
    """A broken forbidden_functions: when patching, only the original code is
    taken away -- wrong as soon as a patch goes on top of another."""
    from livefs.kernel.tasks import KLP_PATCHED
    if klp.target_state != KLP_PATCHED:
        return _real_forbidden(klp)
    return [(f.old_func, f.old_name) for o in klp.transition_patch.objs if o.patched for f in o.funcs
            if f.old_func is not None]


def _handler_runs_the_bottom(ops, task, regs):
    """A broken klp_ftrace_handler: a task not yet switched runs the oldest
    patch's code instead of the one just below the newest."""
    if not ops.func_stack:
        return
    func = ops.func_stack[0]
    if func.transition and task.patch_state == KLP_UNPATCHED:
        if len(ops.func_stack) < 2:
            return
        func = ops.func_stack[-1]
    if func.nop or func.new_func is None:
        return
    regs.ip = func.new_func


def _disable_without_ebusy(self, patch):
    """A broken _disable: no EBUSY while another patch is in transition."""
    if self.transition_patch is not None and patch.enabled:
        return 0
    return _real_disable(self, patch)


_real_forbidden = tr.forbidden_functions
_real_disable = core.Livepatch._disable


@pytest.mark.parametrize("where, name, broken, message", [
    (tr, "forbidden_functions", _stack_check_against_the_original, "still in lf_st_"),
    (lp_patch, "klp_ftrace_handler", _handler_runs_the_bottom, r"ran lf_st_\d during 'lf_st_\d' \(lf_st_\d or lf_st_\d\)"),
    (core.Livepatch, "_disable", _disable_without_ebusy, "the kernel's rules say -16"),
])
def test_search_finds_a_seeded_bug(monkeypatch, where, name, broken, message):
    """Bugs that the machine's expectations once took from the code under test
    (func_stack, forbidden_functions, any errno accepted): its own shadow of
    the patches finds each, with the message that names it."""
    monkeypatch.setattr(where, name, broken)
    # on 6.12, where the machine's spinning tasks switch in cond_resched(): from
    # v6.16 a spinner holds its transition until it stops spinning
    monkeypatch.setattr(machine_mod, "Kernel", functools.partial(Kernel, version=KernelVersion.parse("6.12")))
    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(LivepatchMachine, settings=settings(
            max_examples=300, stateful_step_count=30, deadline=None, database=None, derandomize=True,
            report_multiple_bugs=False, suppress_health_check=list(HealthCheck)))
