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

Every switch, failed check, signal, force, reversal and completion is written
into the transition's record (record.py), with its cause.  The machine may run
another consistency model than the kernel's (consistency.py): the branches for
them are marked, and the kernel's path is the one without a mark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..clock import NSEC_PER_SEC
from ..printk import KERN_NOTICE, KERN_WARNING
from ..symbols import KFunc
from ..tasks import KLP_PATCHED, KLP_UNDEFINED, KLP_UNPATCHED, Task, TaskKind
from .consistency import ConsistencyModel
from .objects import KlpPatch
from .patch import klp_unpatch_objects
from .record import Cause, TransitionRecord, task_id

if TYPE_CHECKING:
    from ..kernel import Kernel
    from .core import Livepatch

SIGNALS_TIMEOUT = 15
# the timer wheel (kernel/time/timer.c): 64 buckets a level, each level 8 times coarser;
# level 1 holds timers 63 to 503 jiffies out
LVL_CLK_SHIFT, LVL_START_1, LVL_START_2 = 3, 63, 504

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


def klp_retry_delay_ns(k: "Kernel") -> int:
    """How long until ``schedule_delayed_work(&klp_transition_work,
    round_jiffies_relative(HZ))`` runs the work again.

    round_jiffies_common(): a second of jiffies ahead, rounded to a whole
    second of jiffies -- down when less than a quarter second past one, else
    up.  (The model queues the work on CPU 0, where the per-CPU skew of 3
    jiffies a CPU is nil; a second ahead never rounds into the past.)  That
    expiry, 188 to 437 jiffies out, lands in level 1 of the timer wheel, whose
    8-jiffy buckets fire strictly after it (calc_index())."""
    hz = k.HZ
    j0 = k.jiffies()
    j = j0 + hz
    rem = j % hz
    expires = j - rem if rem < hz // 4 else j - rem + hz
    assert LVL_START_1 <= expires - j0 < LVL_START_2
    fires = ((expires >> LVL_CLK_SHIFT) + 1) << LVL_CLK_SHIFT
    return (fires - k.INITIAL_JIFFIES) * NSEC_PER_SEC // hz - k.clock.now_ns


def klp_init_transition(klp: "Livepatch", patch: KlpPatch, state: int) -> None:
    assert state != KLP_UNDEFINED
    klp.pr_debug("init", f"'{patch.name}': initializing {_dir(state)} transition")
    klp.transition_patch = patch
    klp.target_state = state
    klp.transition_forced = False
    initial = KLP_UNPATCHED if state == KLP_PATCHED else KLP_PATCHED
    record = TransitionRecord(patch.name, "patched" if state == KLP_PATCHED else "unpatched", klp.model.value,
                              klp.k.clock.now_ns)
    for task in klp.k.tasks.all_with_idle():
        task.patch_state = initial
        record.note_task(task)
        record.initial_pending.append(task_id(task))
    klp.log.begin(record)
    klp.attempt = 0
    for func in patch.funcs():
        func.transition = True


def klp_start_transition(klp: "Livepatch") -> None:
    patch = klp.transition_patch
    assert patch is not None and klp.target_state != KLP_UNDEFINED
    klp.pr(KERN_NOTICE, f"'{patch.name}': starting {_dir(klp.target_state)} transition")
    for task in klp.k.tasks.all_with_idle():
        if task.patch_state != klp.target_state:
            task.patch_pending = True
    if klp.model is ConsistencyModel.HYBRID:
        klp.set_cond_resched(True)
    klp.signals_cnt = 0
    _event(klp, "start", _dir(klp.target_state))


def _event(klp: "Livepatch", kind: str, detail: str = "") -> None:
    record = klp.log.current
    if record is not None:
        record.event(klp.k.clock.now_ns, klp.attempt, kind, detail)


def _switch(klp: "Livepatch", task: Task, cause: Cause) -> None:
    """The task now runs the target state's code; the record says why."""
    task.patch_pending = False
    task.patch_state = klp.target_state
    record = klp.log.current
    if record is not None:
        record.note_task(task)
        record.switches.append((klp.k.clock.now_ns, klp.attempt, task_id(task), cause))
        if cause in (Cause.FORCE, Cause.IMMEDIATE):  # the switches that need no proof: say when it was unsafe
            name = _forbidden_frame(klp, task)
            if name is not None:
                _event(klp, "unsafe", f"{task_id(task)}:{name}")


def _blocked(klp: "Livepatch", task: Task, why: str) -> None:
    record = klp.log.current
    if record is not None:
        record.note_task(task)
        record.blocked.append((klp.k.clock.now_ns, klp.attempt, task_id(task), why))


def klp_update_patch_state(klp: "Livepatch", task: Task, cause: Cause = Cause.RETURN_TO_USER) -> None:
    """Called where a task cannot be inside patched code: kernel exit, idle loop."""
    if task.patch_pending and klp.model.switches_per_task:
        _switch(klp, task, cause)


def klp_new_task(klp: "Livepatch", task: Task, state: int, pending: bool) -> None:
    """A task born mid-transition (fork, or first met) takes ``state``: its
    parent's, or the target when it cannot be inside the code taken away.
    (Also a staged task put into code the transition takes away: pending again.)"""
    task.patch_state, task.patch_pending = state, pending
    record = klp.log.current
    if record is None:
        return
    if state == klp.target_state and not pending:
        _switch(klp, task, Cause.FORK)
    else:
        record.note_task(task)
        _event(klp, "pending", str(task_id(task)))


def klp_staged_switch(klp: "Livepatch", task: Task) -> None:
    """The mock's staging put a task into the code the transition brings: only
    a switched task can be there, so it is switched (and recorded so)."""
    _switch(klp, task, Cause.STAGED)


def klp_task_exit(klp: "Livepatch", task: Task) -> None:
    """A task that ends before it switched leaves the transition (recorded)."""
    record = klp.log.current
    if record is not None and task.patch_pending:
        record.switches.append((klp.k.clock.now_ns, klp.attempt, task_id(task), Cause.EXIT))


def _code_pairs(klp: "Livepatch") -> list[tuple[KFunc, KFunc, str]]:
    """For each function the transition patch changes: (the patch's code, the
    code just below it on the func_stack -- the previous patch's, or the
    original), and the name to report."""
    patch = klp.transition_patch
    assert patch is not None
    pairs: list[tuple[KFunc, KFunc, str]] = []
    for obj in patch.objs:
        if not obj.patched:
            continue
        for func in obj.funcs:
            if func.old_func is None:
                continue
            own = func.new_func if func.new_func is not None else func.old_func
            ops = klp.ops.get(func.old_func)
            stack = ops.func_stack if ops else []
            below = func.old_func
            if func in stack and stack.index(func) + 1 < len(stack):
                prev = stack[stack.index(func) + 1]
                below = prev.new_func if prev.new_func is not None else prev.old_func
            pairs.append((own, below, func.old_name))
    return pairs


def forbidden_functions(klp: "Livepatch") -> list[tuple[KFunc, str]]:
    """The code each task must not be in to switch, with the name to report:
    what the transition takes away."""
    patching = klp.target_state == KLP_PATCHED
    return [(below if patching else own, name) for own, below, name in _code_pairs(klp)]


def incoming_functions(klp: "Livepatch") -> list[KFunc]:
    """The code the transition brings: only a task at the target runs it."""
    patching = klp.target_state == KLP_PATCHED
    return [own if patching else below for own, below, _ in _code_pairs(klp)]


def _forbidden_frame(klp: "Livepatch", task: Task) -> str | None:
    """The name of the first function on the task's stack that the transition
    takes away, or None."""
    for code, name in forbidden_functions(klp):
        if any(frame is code for frame in task.stack):
            return name
    return None


def _blocker(klp: "Livepatch", task: Task) -> tuple[str, str] | None:
    """What stops the stack check: ("running", "") or ("sleeping", function)."""
    if klp.k.sched.task_curr(task) and task is not klp.k.current:
        return "running", ""
    name = _forbidden_frame(klp, task)
    return None if name is None else ("sleeping", name)


# kGraft model: the frames of a kthread that waits at the top of its main loop
_KTHREAD_LOOP_FRAMES = frozenset({"kthread", "kthreadd", "smpboot_thread_fn", "worker_thread", "rcu_gp_kthread",
                                  "schedule", "__schedule"})


def _kgraft_try_switch(klp: "Livepatch", task: Task) -> bool:
    """kGraft model: no stack check.  A task in user space holds no kernel
    state; a kthread waiting at the top of its loop is at its safe point;
    anything else in the kernel waits until it leaves."""
    if task.kind is TaskKind.USER and not task.stack:
        _switch(klp, task, Cause.RETURN_TO_USER)
        return True
    if task.kind is TaskKind.KTHREAD and all(f.name in _KTHREAD_LOOP_FRAMES for f in task.stack):
        _switch(klp, task, Cause.KTHREAD_LOOP)
        return True
    if task.kind is TaskKind.IDLE and not klp.k.sched.task_curr(task):
        _switch(klp, task, Cause.IDLE_LOOP)  # preempted in do_idle(): it resumes in its idle loop
        return True
    _blocked(klp, task, "running" if klp.k.sched.task_curr(task) else "in the kernel")
    return False


def klp_try_switch_task(klp: "Livepatch", task: Task, cause: Cause = Cause.STACK_CHECK) -> bool:
    if task.patch_state == klp.target_state:
        return True
    if klp.model is ConsistencyModel.KGRAFT:
        return _kgraft_try_switch(klp, task)
    blocker = _blocker(klp, task)
    if blocker is not None:
        kind, name = blocker
        what = "is running" if kind == "running" else f"is sleeping on function {name}"
        klp.pr_debug(kind, f"klp_try_switch_task: {task.comm}:{task.pid} {what}")
        if cause is Cause.STACK_CHECK:  # a failed cond_resched() self-check (every 10 ms) is not written down
            _blocked(klp, task, "running" if kind == "running" else f"sleeping on function {name}")
        return False
    _switch(klp, task, cause)
    return True


def klp_send_signals(klp: "Livepatch") -> None:
    if klp.signals_cnt == SIGNALS_TIMEOUT:
        klp.pr(KERN_NOTICE, "signaling remaining tasks")
    _event(klp, "signal", ",".join(str(task_id(t)) for t in klp.k.tasks.for_each_process_thread() if t.patch_pending))
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
    if klp.model is ConsistencyModel.KGRAFT:
        return "in the kernel" if task.stack else None
    blocker = _blocker(klp, task)
    if blocker is None:
        return None
    return "running" if blocker[0] == "running" else f"sleeping on function {blocker[1]}"


def klp_try_complete_transition(klp: "Livepatch") -> bool:
    patch = klp.transition_patch
    assert patch is not None and klp.target_state != KLP_UNDEFINED
    klp.attempt += 1
    _event(klp, "attempt")
    if klp.model is ConsistencyModel.IMMEDIATE:
        for task in klp.k.tasks.all_with_idle():
            if task.patch_state != klp.target_state:
                _switch(klp, task, Cause.IMMEDIATE)
        complete = True
    elif klp.model is ConsistencyModel.KPATCH:
        complete = _kpatch_stop_machine(klp)
    else:
        complete = True
        for task in klp.k.tasks.for_each_process_thread():
            if not klp_try_switch_task(klp, task):
                complete = False
        for idle in klp.k.tasks.idle:
            if not klp_try_switch_task(klp, idle):
                complete = False
                klp.k.sched.wake_up_if_idle(idle)  # through the idle loop it switches
    if not complete:
        if klp.signals_cnt and klp.signals_cnt % SIGNALS_TIMEOUT == 0 and klp.model.switches_per_task:
            klp_send_signals(klp)
        klp.signals_cnt += 1
        klp.schedule_transition_work(klp_retry_delay_ns(klp.k))
        return False
    klp.set_cond_resched(False)
    klp_complete_transition(klp)
    if not patch.enabled:
        klp.free_patch_async(patch)
    elif patch.replace:
        klp.free_replaced_patches_async(patch)
    return True


def klp_transition_settled(klp: "Livepatch") -> bool:
    """Every task, idle tasks included, runs the target state and the retry
    work is the next thing due: the transition now only waits for that
    klp_transition_work, which will complete it, and nothing in the model
    can happen before.  (A live mount may skip model time ahead to it.)"""
    work = klp.transition_work
    if klp.transition_patch is None or work is None or work.cancelled:
        return False
    if klp.k.wq.next_deadline() != work.due_ns:
        return False
    target = klp.target_state
    return all(t.patch_state == target for t in klp.k.tasks.all_with_idle())


def _kpatch_stop_machine(klp: "Livepatch") -> bool:
    """kpatch model: with every CPU stopped, look at every stack (running
    tasks included); switch all tasks together only if none holds code the
    transition takes away."""
    holders = 0
    for task in klp.k.tasks.all_with_idle():
        if task.patch_state == klp.target_state:
            continue
        name = _forbidden_frame(klp, task)
        if name is not None:
            holders += 1
            _blocked(klp, task, f"sleeping on function {name}")
    if holders:
        return False
    for task in klp.k.tasks.all_with_idle():
        if task.patch_state != klp.target_state:
            _switch(klp, task, Cause.STACK_CHECK)
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
    _event(klp, "complete", _dir(target))
    klp.log.end(klp.k.clock.now_ns, "forced" if klp.transition_forced else "complete")
    klp.target_state = KLP_UNDEFINED
    klp.transition_patch = None


def klp_cancel_transition(klp: "Livepatch") -> None:
    if klp.target_state != KLP_PATCHED or klp.transition_patch is None:
        return
    klp.pr_debug("cancel",
                 f"'{klp.transition_patch.name}': canceling patching transition, going to unpatch")
    _event(klp, "cancel")
    klp.target_state = KLP_UNPATCHED
    klp_complete_transition(klp)
    if klp.log.last() is not None:
        klp.log.last().outcome = "canceled"


def klp_reverse_transition(klp: "Livepatch") -> None:
    patch = klp.transition_patch
    assert patch is not None
    direction = "patching to unpatching" if klp.target_state == KLP_PATCHED else "unpatching to patching"
    klp.pr_debug("reverse", f"'{patch.name}': reversing transition from {direction}")
    _event(klp, "reverse", direction)
    for task in klp.k.tasks.all_with_idle():
        task.patch_pending = False
    patch.enabled = not patch.enabled
    klp.target_state = KLP_UNPATCHED if klp.target_state == KLP_PATCHED else KLP_PATCHED
    klp.attempt = 0
    if klp.log.current is not None:
        klp.log.current.target += ", reversed to " + ("patched" if klp.target_state == KLP_PATCHED else "unpatched")
    klp_start_transition(klp)


def klp_force_transition(klp: "Livepatch") -> None:
    patch = klp.transition_patch
    assert patch is not None
    klp.pr(KERN_WARNING, "forcing remaining tasks to the patched state")
    klp.transition_forced = True
    _event(klp, "force")
    for task in klp.k.tasks.all_with_idle():
        if task.patch_pending:
            _switch(klp, task, Cause.FORCE)
    if klp.target_state == KLP_UNPATCHED:
        patch.forced = True
    elif patch.replace:
        for other in klp.patches:
            if other is not patch:
                other.forced = True


def klp_copy_process(klp: "Livepatch", parent: Task, child: Task) -> None:
    klp_new_task(klp, child, parent.patch_state, parent.patch_pending)
