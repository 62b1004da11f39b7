"""Regression tests for bugs the suite once let through (issue 16).

Each test here was written against a bug seeded into the model and fails on
it; the expectations come from the kernel's rules (spec/transition.md), worked
out in the test itself, never from the model's own helpers
(``forbidden_functions``, ``func_stack``, ``klp_check_task``).  Virtual time
only: no sleeps.
"""

from __future__ import annotations

import errno

import attrs

from livefs.catalog.api import Func, ModuleDef, Object, Patch
from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.symbols import KFunc
from livefs.kernel.tasks import KLP_PATCHED, KLP_UNDEFINED, KLP_UNPATCHED, Task, TaskKind

LP = "test_klp_livepatch"
REPLACE0 = "test_klp_atomic_replace"
DEMO = "test_klp_callbacks_demo"
BUSY = "test_klp_callbacks_busy"
LIVE = "[MODULE_STATE_LIVE] Normal state"


def stuck_in(machine, func: str, obj: str = "vmlinux", comm: str = "stuck") -> Task:
    """A kthread sleeping inside ``obj:func``, staged outside any transition."""
    k = machine.k
    assert not k.livepatch.in_transition()
    return k.sched.spawn(TaskKind.KTHREAD, comm, k.symbols.find(obj, func)[0])


def pending_matches_state(machine, target: int) -> list[str]:
    """Tasks whose TIF_PATCH_PENDING disagrees with the rule "pending exactly
    when not yet at ``target``" (klp_start_transition's rule)."""
    return [f"{t!r}: state {t.patch_state}, pending {t.patch_pending}"
            for t in machine.k.tasks.all_with_idle() if t.patch_pending != (t.patch_state != target)]


# -- EBUSY for a second transition ---------------------------------------------------------------

def _second_disable_is_busy(machine, start) -> None:
    """With LP enabled and ``start()`` leaving REPLACE0 stuck in a transition,
    ``echo 0`` to LP must fail with exactly EBUSY and change nothing: no log
    line, LP still enabled and in effect, the other transition untouched."""
    k = machine.k
    assert machine.insmod(LP) == 0
    start()
    other = k.livepatch.transition_patch
    assert other is not None and other.name == REPLACE0
    target = k.livepatch.target_state
    machine.set_mark()
    assert machine.write(LP, "enabled", b"0\n") == -errno.EBUSY
    assert machine.log() == []
    assert k.livepatch.find_sysfs_patch(LP).enabled
    assert (k.livepatch.transition_patch, k.livepatch.target_state) == (other, target)
    assert machine.cat() == f"{LP}: this has been live patched\n"


def test_disable_while_another_patch_is_patching_is_ebusy(machine):
    def start() -> None:
        stuck_in(machine, "meminfo_proc_show")
        assert machine.insmod(REPLACE0, "replace=0") == 0

    _second_disable_is_busy(machine, start)
    assert machine.k.livepatch.target_state == KLP_PATCHED


def test_disable_while_another_patch_is_unpatching_is_ebusy(machine):
    def start() -> None:
        assert machine.insmod(REPLACE0, "replace=0") == 0
        assert not machine.k.livepatch.in_transition()  # nothing blocks it yet
        stuck_in(machine, "livepatch_meminfo_proc_show", REPLACE0)
        assert machine.write(REPLACE0, "enabled", b"0") == 0

    _second_disable_is_busy(machine, start)
    assert machine.k.livepatch.target_state == KLP_UNPATCHED


# -- reversals: no pre-callbacks, flags and states reset ------------------------------------------

def test_reversal_to_unpatching_runs_no_pre_callbacks(machine):
    """test-callbacks.sh "busy target module": the reversal prints only the
    reversing and starting lines; its completion runs post_unpatch for the
    loaded objects and nothing else (no pre_unpatch at all)."""
    k = machine.k
    assert machine.insmod(BUSY, "block_transition=Y") == 0
    assert machine.insmod(DEMO) == 0
    assert k.livepatch.transition_patch is not None  # the worker sits in busymod_work_func
    machine.set_mark()
    assert machine.write(DEMO, "enabled", b"0") == 0
    assert machine.log() == [f"livepatch: '{DEMO}': reversing transition from patching to unpatching",
                             f"livepatch: '{DEMO}': starting unpatching transition"]
    k.advance(3 * NSEC_PER_SEC)
    assert machine.log() == [f"livepatch: '{DEMO}': reversing transition from patching to unpatching",
                             f"livepatch: '{DEMO}': starting unpatching transition",
                             f"livepatch: '{DEMO}': completing unpatching transition",
                             f"{DEMO}: post_unpatch_callback: vmlinux",
                             f"{DEMO}: post_unpatch_callback: {BUSY} -> {LIVE}",
                             f"livepatch: '{DEMO}': unpatching complete"]


def test_reversal_to_patching_runs_no_pre_callbacks(machine):
    """Disable (pre_unpatch runs, as it should), stall on a task in the new
    code, reverse: no pre_patch on the way back, post_patch at completion."""
    k = machine.k
    assert machine.insmod(BUSY) == 0
    assert machine.insmod(DEMO) == 0
    stuck = stuck_in(machine, "patched_work_func", DEMO)
    assert machine.write(DEMO, "enabled", b"0") == 0
    assert k.livepatch.transition_patch is not None
    machine.set_mark()
    assert machine.write(DEMO, "enabled", b"1") == 0
    reversal = [f"livepatch: '{DEMO}': reversing transition from unpatching to patching",
                f"livepatch: '{DEMO}': starting patching transition"]
    assert machine.log() == reversal
    k.advance(3 * NSEC_PER_SEC)
    assert machine.log() == reversal + [f"livepatch: '{DEMO}': completing patching transition",
                                        f"{DEMO}: post_patch_callback: vmlinux",
                                        f"{DEMO}: post_patch_callback: {BUSY} -> {LIVE}",
                                        f"livepatch: '{DEMO}': patching complete"]
    assert stuck.patch_state == KLP_UNDEFINED


def _stalled_patching(machine) -> tuple[Task, Task]:
    """LP in a patching transition held up by a kthread in the original
    function, plus a user task that already switched."""
    k = machine.k
    old = stuck_in(machine, "cmdline_proc_show", comm="in-old")
    machine.insmod(LP)
    user = k.sched.spawn(TaskKind.USER, "switched", None)
    assert k.livepatch.target_state == KLP_PATCHED
    assert (old.patch_state, old.patch_pending) == (KLP_UNPATCHED, True)
    return old, user


def test_reversal_moves_pending_flags_to_the_tasks_that_switched(machine):
    """After a reversal exactly the tasks that are not at the new target are
    pending: the one that never switched is no longer pending, everyone who
    had switched is.  Once it completes nothing is pending and every
    patch_state is -1 (KLP_UNDEFINED)."""
    k = machine.k
    old, user = _stalled_patching(machine)
    switched = [t for t in k.tasks.all_with_idle() if t.patch_state == KLP_PATCHED]
    assert user in switched and machine.shell in switched
    assert machine.write(LP, "enabled", b"0") == 0
    assert k.livepatch.target_state == KLP_UNPATCHED
    assert pending_matches_state(machine, KLP_UNPATCHED) == []
    # the writer itself switched back on its way out of the write
    assert (machine.shell.patch_state, machine.shell.patch_pending) == (KLP_UNPATCHED, False)
    assert not old.patch_pending
    assert all(t.patch_pending for t in switched if t is not machine.shell)
    k.advance(3 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is None
    assert [(t, t.patch_state, t.patch_pending) for t in k.tasks.all_with_idle()
            if t.patch_state != KLP_UNDEFINED or t.patch_pending] == []


def test_double_reversal_keeps_flags_consistent(machine):
    """Reverse twice (patching -> unpatching -> patching) before anything
    completes: the flags follow each new target."""
    k = machine.k
    old, user = _stalled_patching(machine)
    assert machine.write(LP, "enabled", b"0") == 0
    assert machine.write(LP, "enabled", b"1") == 0
    assert k.livepatch.target_state == KLP_PATCHED
    assert pending_matches_state(machine, KLP_PATCHED) == []
    assert old.patch_pending and old.patch_state == KLP_UNPATCHED
    k.sched.wake(old)
    k.advance(3 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is None and k.livepatch.find_sysfs_patch(LP).enabled
    assert all(t.patch_state == KLP_UNDEFINED and not t.patch_pending for t in k.tasks.all_with_idle())


# -- stacked patches: who runs what --------------------------------------------------------------

@attrs.define
class Stack:
    """The test's own account of the patches on ``cmdline_proc_show``: the
    enabled ones in enabling order, and the transition it started (patch
    name and target).  The function a task runs follows from these and the
    task's patch_state alone (klp_ftrace_handler's rule, spec §11)."""

    applied: list[str] = attrs.field(factory=list)
    transition: tuple[str, int] | None = None

    def expected(self, task: Task) -> str:
        if not self.applied:
            return "orig"
        top = self.applied[-1]
        below = self.applied[-2] if len(self.applied) > 1 else "orig"
        if self.transition is None or self.transition[0] != top:
            return top
        # the top entry is in transition: a task at KLP_UNPATCHED (not yet
        # switched to it, or already switched away from it) runs the entry below
        assert task.patch_state in (KLP_UNPATCHED, KLP_PATCHED), task
        return below if task.patch_state == KLP_UNPATCHED else top


def _stacking_patch(name: str) -> ModuleDef:
    return ModuleDef(name=name, livepatch=True, patch=Patch(objs=[Object(None, [
        Func("cmdline_proc_show", lambda call, n=name: n, new_name=f"{name}_cmdline_proc_show")])]))


def _runs(machine, task: Task) -> str:
    """What ``task``'s call of cmdline_proc_show executes (no kernel exit:
    a pending task must not switch on the way out)."""
    got = machine.k.call(task, "vmlinux", "cmdline_proc_show")
    return "orig" if got == machine.k.cmdline + "\n" else got


def _check_everyone(machine, stack: Stack) -> None:
    k = machine.k
    wrong = {t.comm: (t.patch_state, _runs(machine, t), stack.expected(t))
             for t in k.tasks.for_each_process_thread() if _runs(machine, t) != stack.expected(t)}
    assert wrong == {}


def _load(machine, stack: Stack, name: str) -> None:
    k = machine.k
    with k.syscall(machine.task("insmod")):
        assert k.load_module(_stacking_patch(name)) == 0
    stack.applied.append(name)
    stack.transition = (name, KLP_PATCHED) if k.livepatch.in_transition() else None


def _replacement(machine, name: str) -> KFunc:
    return machine.k.symbols.find(name, f"{name}_cmdline_proc_show")[0]


def test_three_stacked_patches_run_the_code_of_the_task_state(machine):
    """A, B, C on one function.  Patching C: only a task sleeping in B's code
    (what C's switch takes away) is held back; one in A's code or in the
    original is not.  Held-back tasks run B, switched ones C.  Unpatching C
    with a task in C's code: it runs C, everyone else B.  Disabling A under
    B: everyone runs B all along."""
    k = machine.k
    stack = Stack()
    for name in ("lf_a", "lf_b"):
        _load(machine, stack, name)
        assert stack.transition is None
    in_orig = stuck_in(machine, "cmdline_proc_show", comm="in-orig")
    in_a = k.sched.spawn(TaskKind.KTHREAD, "in-a", _replacement(machine, "lf_a"))
    in_b = k.sched.spawn(TaskKind.KTHREAD, "in-b", _replacement(machine, "lf_b"))
    _load(machine, stack, "lf_c")
    assert stack.transition == ("lf_c", KLP_PATCHED), "the task in B's code holds C's transition"
    assert {t.comm: t.patch_state for t in (in_orig, in_a, in_b)} == {
        "in-orig": KLP_PATCHED, "in-a": KLP_PATCHED, "in-b": KLP_UNPATCHED}
    assert (_runs(machine, in_b), _runs(machine, in_a), _runs(machine, machine.shell)) == ("lf_b", "lf_c", "lf_c")
    _check_everyone(machine, stack)
    k.advance(5 * NSEC_PER_SEC)
    assert in_b.patch_state == KLP_UNPATCHED and k.livepatch.in_transition()
    k.sched.wake(in_b)
    k.advance(2 * NSEC_PER_SEC)
    assert not k.livepatch.in_transition()
    stack.transition = None
    _check_everyone(machine, stack)

    in_c = k.sched.spawn(TaskKind.KTHREAD, "in-c", _replacement(machine, "lf_c"))
    assert machine.write("lf_c", "enabled", b"0") == 0
    stack.transition = ("lf_c", KLP_UNPATCHED)
    assert in_c.patch_state == KLP_PATCHED and in_b.patch_state == in_a.patch_state == KLP_UNPATCHED
    assert (_runs(machine, in_c), _runs(machine, in_a)) == ("lf_c", "lf_b")
    _check_everyone(machine, stack)
    k.sched.wake(in_c)
    k.advance(2 * NSEC_PER_SEC)
    assert machine.patches() == ["lf_a", "lf_b"]
    stack.applied.remove("lf_c")
    stack.transition = None

    in_a2 = k.sched.spawn(TaskKind.KTHREAD, "in-a2", _replacement(machine, "lf_a"))
    assert machine.write("lf_a", "enabled", b"0") == 0
    assert k.livepatch.in_transition() and in_a2.patch_state == KLP_PATCHED
    stack.transition = ("lf_a", KLP_UNPATCHED)
    _check_everyone(machine, stack)
    assert {_runs(machine, t) for t in k.tasks.for_each_process_thread()} == {"lf_b"}


# -- cond_resched and its static key ---------------------------------------------------------------

def test_cond_resched_switches_nobody_while_the_key_is_off(smp_612):
    """A task spinning on the other CPU can switch only in its own
    cond_resched(), and only while klp_sched_try_switch_key is on: with the
    key turned off mid-transition its cond_resched calls leave it pending;
    turned back on, the next call switches it."""
    k = smp_612.k
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    assert k.sched.spin(spinner, k.vmlinux_func("process_one_work"), cpu=1) == 0
    smp_612.insmod(LP)
    assert k.livepatch.in_transition() and spinner.patch_pending
    key = k.jump_labels.key("klp_sched_try_switch_key")
    assert key is not None and key.value
    k.jump_labels.disable(key)
    assert not k.jump_labels.site_value(k.vmlinux_func("cond_resched"), "klp_sched_try_switch_key")
    for _ in range(3):
        k.sched.cond_resched(spinner)
    k.advance(50_000_000)  # its periodic cond_resched calls, and no transition attempt yet
    assert (spinner.patch_state, spinner.patch_pending) == (KLP_UNPATCHED, True)
    k.jump_labels.enable(key)
    k.sched.cond_resched(spinner)
    assert (spinner.patch_state, spinner.patch_pending) == (KLP_PATCHED, False)
