"""The per-task consistency model (kernel/livepatch/transition.c).

A transition moves every task from the initial state to ``target_state``.  A
task switches when it is provably not inside code that the transition takes
away: its stack holds none of the forbidden functions (stack check, run from
the transition work every second of model time), or it passes a point where
it cannot be inside any such code -- the return to user space, the idle loop,
``cond_resched()`` -- with its pending flag set.  The first completion attempt
runs synchronously inside the enable or disable; a transition that cannot
complete re-arms the delayed work, and every 15 attempts it nudges the
stragglers with fake signals.  ``force`` switches everyone without any check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..clock import NSEC_PER_SEC
from ..printk import KERN_NOTICE, KERN_WARNING
from ..symbols import KFunc
from ..tasks import KLP_PATCHED, KLP_UNDEFINED, KLP_UNPATCHED, Task
from .objects import KlpPatch
from .patch import klp_unpatch_objects

if TYPE_CHECKING:
    from .core import Livepatch

SIGNALS_TIMEOUT = 15
HZ_NS = NSEC_PER_SEC

# pr_debug sites of transition.c: key -> (function, line, format)
DEBUG_SITES = {
    "complete": ("klp_complete_transition", 85, "'%s': completing %s transition\n"),
    "cancel": ("klp_cancel_transition", 161, "'%s': canceling patching transition, going to unpatch\n"),
    "running": ("klp_try_switch_task", 318, "%s: %s:%d is running\n"),
    "unreliable": ("klp_try_switch_task", 321, "%s: %s:%d has an unreliable stack\n"),
    "sleeping": ("klp_try_switch_task", 324, "%s: %s:%d is sleeping on function %s\n"),
    "unknown": ("klp_try_switch_task", 328, "%s: Unknown error code (%d) when trying to switch %s:%d\n"),
    "init": ("klp_init_transition", 508, "'%s': initializing %s transition\n"),
    "reverse": ("klp_reverse_transition", 637, "'%s': reversing transition from %s\n"),
}


def _dir(state: int) -> str:
    return "patching" if state == KLP_PATCHED else "unpatching"


def round_jiffies_relative_hz(now_ns: int) -> int:
    """Delay of ``round_jiffies_relative(HZ)``: expiry rounded to a whole second."""
    expiry = now_ns + HZ_NS
    rounded = ((expiry + HZ_NS // 2) // HZ_NS) * HZ_NS
    if rounded <= now_ns:
        rounded = expiry
    return rounded - now_ns


def klp_init_transition(klp: "Livepatch", patch: KlpPatch, state: int) -> None:
    assert state != KLP_UNDEFINED
    klp.pr_debug("init", f"'{patch.name}': initializing {_dir(state)} transition")
    klp.transition_patch = patch
    klp.target_state = state
    klp.transition_forced = False
    initial = KLP_UNPATCHED if state == KLP_PATCHED else KLP_PATCHED
    for task in klp.k.tasks.all_with_idle():
        task.patch_state = initial
    for func in patch.funcs():
        func.transition = True


def klp_start_transition(klp: "Livepatch") -> None:
    patch = klp.transition_patch
    assert patch is not None and klp.target_state != KLP_UNDEFINED
    klp.pr(KERN_NOTICE, f"'{patch.name}': starting {_dir(klp.target_state)} transition")
    for task in klp.k.tasks.all_with_idle():
        if task.patch_state != klp.target_state:
            task.patch_pending = True
    klp.set_cond_resched(True)
    klp.signals_cnt = 0


def klp_update_patch_state(klp: "Livepatch", task: Task) -> None:
    """Called where a task cannot be inside patched code: kernel exit, idle loop."""
    if task.patch_pending:
        task.patch_pending = False
        task.patch_state = klp.target_state


def forbidden_functions(klp: "Livepatch") -> list[tuple[KFunc, str]]:
    """The code each task must not be in to switch, with the name to report."""
    patch = klp.transition_patch
    assert patch is not None
    forbidden: list[tuple[KFunc, str]] = []
    for obj in patch.objs:
        if not obj.patched:
            continue
        for func in obj.funcs:
            if func.old_func is None:
                continue
            if klp.target_state == KLP_UNPATCHED:
                code = func.new_func if func.new_func is not None else func.old_func
            else:
                ops = klp.ops.get(func.old_func)
                stack = ops.func_stack if ops else []
                if len(stack) <= 1 or func not in stack or stack.index(func) + 1 >= len(stack):
                    code = func.old_func
                else:
                    prev = stack[stack.index(func) + 1]
                    code = prev.new_func if prev.new_func is not None else prev.old_func
            if code is not None:
                forbidden.append((code, func.old_name))
    return forbidden


def _blocker(klp: "Livepatch", task: Task) -> tuple[str, str] | None:
    """What stops the stack check: ("running", "") or ("sleeping", function)."""
    if klp.k.sched.task_curr(task) and task is not klp.k.current:
        return "running", ""
    for code, name in forbidden_functions(klp):
        if any(frame is code for frame in task.stack):
            return "sleeping", name
    return None


def klp_try_switch_task(klp: "Livepatch", task: Task) -> bool:
    if task.patch_state == klp.target_state:
        return True
    blocker = _blocker(klp, task)
    if blocker is not None:
        kind, name = blocker
        what = "is running" if kind == "running" else f"is sleeping on function {name}"
        klp.pr_debug(kind, f"klp_try_switch_task: {task.comm}:{task.pid} {what}")
        return False
    task.patch_pending = False
    task.patch_state = klp.target_state
    return True


def klp_send_signals(klp: "Livepatch") -> None:
    if klp.signals_cnt == SIGNALS_TIMEOUT:
        klp.pr(KERN_NOTICE, "signaling remaining tasks")
    for task in klp.k.tasks.for_each_process_thread():
        if not task.patch_pending:
            continue
        if task.is_kthread:
            klp.k.sched.wake_up_interruptible(task)
        else:
            klp.k.sched.fake_signal(task)


def initial_state(klp: "Livepatch") -> int:
    return KLP_UNPATCHED if klp.target_state == KLP_PATCHED else KLP_PATCHED


def klp_check_task(klp: "Livepatch", task: Task) -> str | None:
    """Why klp_try_switch_task() would not switch ``task`` now (None: it would).
    Side-effect free, for status displays."""
    if task.patch_state == klp.target_state:
        return None
    blocker = _blocker(klp, task)
    if blocker is None:
        return None
    return "running" if blocker[0] == "running" else f"sleeping on function {blocker[1]}"


def klp_try_complete_transition(klp: "Livepatch") -> bool:
    patch = klp.transition_patch
    assert patch is not None and klp.target_state != KLP_UNDEFINED
    complete = True
    for task in klp.k.tasks.for_each_process_thread():
        if not klp_try_switch_task(klp, task):
            complete = False
    for idle in klp.k.tasks.idle:
        if not klp_try_switch_task(klp, idle):
            complete = False
            klp.k.sched.wake_up_if_idle(idle)  # through the idle loop it switches
    if not complete:
        if klp.signals_cnt and klp.signals_cnt % SIGNALS_TIMEOUT == 0:
            klp_send_signals(klp)
        klp.signals_cnt += 1
        klp.schedule_transition_work(round_jiffies_relative_hz(klp.k.clock.now_ns))
        return False
    klp.set_cond_resched(False)
    klp_complete_transition(klp)
    if not patch.enabled:
        klp.free_patch_async(patch)
    elif patch.replace:
        klp.free_replaced_patches_async(patch)
    return True


def klp_complete_transition(klp: "Livepatch") -> None:
    patch = klp.transition_patch
    assert patch is not None
    target = klp.target_state
    klp.pr_debug("complete", f"'{patch.name}': completing {_dir(target)} transition")
    for observer in klp.observers:
        observer("complete", klp)
    if patch.replace and target == KLP_PATCHED:
        klp.unpatch_replaced_patches(patch)
        klp.discard_nops(patch)
    if target == KLP_UNPATCHED:
        klp_unpatch_objects(klp, patch)
    for func in patch.funcs():
        func.transition = False
    for task in klp.k.tasks.all_with_idle():
        task.patch_pending = False
        task.patch_state = KLP_UNDEFINED
    for obj in list(patch.objs):
        if not obj.loaded:
            continue
        if target == KLP_PATCHED:
            klp.post_patch_callback(obj)
        else:
            klp.post_unpatch_callback(obj)
    klp.pr(KERN_NOTICE, f"'{patch.name}': {_dir(target)} complete")
    klp.target_state = KLP_UNDEFINED
    klp.transition_patch = None


def klp_cancel_transition(klp: "Livepatch") -> None:
    if klp.target_state != KLP_PATCHED or klp.transition_patch is None:
        return
    klp.pr_debug("cancel",
                 f"'{klp.transition_patch.name}': canceling patching transition, going to unpatch")
    klp.target_state = KLP_UNPATCHED
    klp_complete_transition(klp)


def klp_reverse_transition(klp: "Livepatch") -> None:
    patch = klp.transition_patch
    assert patch is not None
    direction = "patching to unpatching" if klp.target_state == KLP_PATCHED else "unpatching to patching"
    klp.pr_debug("reverse", f"'{patch.name}': reversing transition from {direction}")
    for task in klp.k.tasks.all_with_idle():
        task.patch_pending = False
    patch.enabled = not patch.enabled
    klp.target_state = KLP_UNPATCHED if klp.target_state == KLP_PATCHED else KLP_PATCHED
    klp_start_transition(klp)


def klp_force_transition(klp: "Livepatch") -> None:
    patch = klp.transition_patch
    assert patch is not None
    klp.pr(KERN_WARNING, "forcing remaining tasks to the patched state")
    klp.transition_forced = True
    for task in klp.k.tasks.all_with_idle():
        klp_update_patch_state(klp, task)
    if klp.target_state == KLP_UNPATCHED:
        patch.forced = True
    elif patch.replace:
        for other in klp.patches:
            if other is not patch:
                other.forced = True


def klp_copy_process(klp: "Livepatch", parent: Task, child: Task) -> None:
    child.patch_pending = parent.patch_pending
    child.patch_state = parent.patch_state
