"""Task staging and the switching paths of the consistency model, in virtual time."""

from __future__ import annotations

from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.tasks import KLP_PATCHED, KLP_UNDEFINED, KLP_UNPATCHED, RunState, TaskKind

LP = "test_klp_livepatch"


def func(k, name, obj="vmlinux"):
    return k.symbols.find(obj, name)[0]


def test_idle_tasks_take_part_and_reset(machine):
    k = machine.k
    blocker = k.sched.spawn(TaskKind.KTHREAD, "blocker", func(k, "cmdline_proc_show"))
    machine.insmod(LP)
    assert all(t.patch_state == KLP_PATCHED for t in k.tasks.idle)
    assert blocker.patch_state == KLP_UNPATCHED
    k.sched.wake(blocker)
    k.advance(2 * NSEC_PER_SEC)
    assert all(t.patch_state == KLP_UNDEFINED for t in k.tasks.all_with_idle())


def test_idle_cpu_switches_through_its_idle_loop(smp):
    k = smp.k
    smp.insmod(LP)
    lp = k.livepatch
    # the other CPU's idle task was running: not checkable, only kicked; its
    # idle loop then switched it, but after the synchronous attempt had failed
    assert lp.transition_patch is not None
    assert smp.log()[-1] == f"livepatch: '{LP}': starting patching transition"
    assert k.tasks.idle[1].patch_state == KLP_PATCHED and not k.tasks.idle[1].patch_pending
    assert lp.transition_patch is not None  # completion waits for the next attempt
    k.advance(2 * NSEC_PER_SEC)
    assert lp.transition_patch is None
    assert smp.log()[-1] == f"livepatch: '{LP}': patching complete"


def test_running_task_cannot_be_checked_but_switches_in_cond_resched(smp_612):
    machine = smp_612
    k = machine.k
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    k.sched.spin(spinner, func(k, "process_one_work"), cpu=1)
    machine.insmod(LP)
    lp = k.livepatch
    assert lp.transition_patch is not None, "a running task blocks the synchronous attempt"
    assert spinner.patch_pending and lp.cond_resched_enabled
    k.advance(20_000_000)  # its cond_resched calls come within milliseconds
    assert spinner.patch_state == KLP_PATCHED and not spinner.patch_pending
    k.advance(2 * NSEC_PER_SEC)
    assert lp.transition_patch is None and not lp.cond_resched_enabled


def test_spinning_inside_the_patched_function_never_switches_itself(smp):
    machine = smp
    k = machine.k
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    k.sched.spin(spinner, func(k, "cmdline_proc_show"))
    machine.insmod(LP)
    k.advance(5 * NSEC_PER_SEC)
    assert spinner.patch_pending and k.livepatch.transition_patch is not None
    k.sched.wake(spinner)
    k.advance(2 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is None


def test_cond_resched_does_nothing_without_a_transition(smp):
    machine = smp
    k = machine.k
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    k.sched.spin(spinner, func(k, "process_one_work"))
    assert k.wq.next_deadline() is None  # no ticks while the hook is off
    k.sched.cond_resched(spinner)
    assert spinner.patch_state == KLP_UNDEFINED


def test_fake_signal_kicks_sleeping_user_task_to_user_space(machine):
    k = machine.k
    user = k.sched.spawn(TaskKind.USER, "sleepy", func(k, "cmdline_proc_show"))
    kthread = k.sched.spawn(TaskKind.KTHREAD, "stuck", func(k, "cmdline_proc_show"))
    machine.insmod(LP)
    k.advance(14 * NSEC_PER_SEC)
    assert user.patch_pending and kthread.patch_pending and kthread.wakeups == 0
    k.advance(2 * NSEC_PER_SEC)  # attempt 16: signals
    assert user.state is RunState.USER and user.patch_state == KLP_PATCHED
    assert kthread.patch_pending and kthread.wakeups == 1  # woken, still inside
    k.advance(15 * NSEC_PER_SEC)
    assert kthread.wakeups == 2


def test_uninterruptible_user_task_ignores_signals(machine):
    k = machine.k
    user = k.sched.spawn(TaskKind.USER, "dstate", func(k, "cmdline_proc_show"), interruptible=False)
    machine.insmod(LP)
    k.advance(20 * NSEC_PER_SEC)
    assert user.patch_pending
    k.sched.return_to_user(user)
    assert user.patch_state == KLP_PATCHED


def test_fork_mid_transition_copies_state_and_flag(machine):
    k = machine.k
    parent = k.sched.spawn(TaskKind.USER, "parent", func(k, "cmdline_proc_show"))
    machine.insmod(LP)
    child = k.sched.fork(parent, "child")
    assert (child.patch_state, child.patch_pending) == (parent.patch_state, parent.patch_pending) \
        == (KLP_UNPATCHED, True)
    assert child.ppid == parent.pid and child.state is RunState.USER
    switched_child = k.sched.fork(machine.shell)
    assert switched_child.patch_state == KLP_PATCHED and not switched_child.patch_pending


def test_exit_removes_a_blocker(machine):
    k = machine.k
    blocker = k.sched.spawn(TaskKind.KTHREAD, "blocker", func(k, "cmdline_proc_show"))
    machine.insmod(LP)
    k.sched.exit(blocker)
    k.advance(2 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is None and k.tasks.get(blocker.pid) is None


def test_busy_module_blocks_until_it_goes(machine):
    k = machine.k
    demo, busy = "test_klp_callbacks_demo", "test_klp_callbacks_busy"
    assert machine.insmod(busy, "block_transition=Y") == 0
    assert machine.log()[-1] == f"{busy}: busymod_work_func enter"
    machine.insmod(demo)
    k.advance(5 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is not None
    machine.set_mark()
    assert machine.write(demo, "enabled", b"0") == 0  # reverse: the old function is fine
    k.advance(3 * NSEC_PER_SEC)
    assert machine.log()[-1] == f"livepatch: '{demo}': unpatching complete"
    machine.rmmod(demo)
    machine.set_mark()
    assert machine.rmmod(busy) == 0
    assert machine.log() == [f"{busy}: busymod_work_func exit", f"{busy}: test_klp_callbacks_busy_exit"]


def test_busy_module_unblocked_by_parameter(machine):
    k = machine.k
    busy = "test_klp_callbacks_busy"
    machine.insmod(busy, "block_transition=Y")
    mod = k.modules.get(busy)
    assert k.modules.param_store(mod, "block_transition", b"N") == 0
    machine.set_mark()
    k.advance(50_000_000)
    assert machine.log() == [f"{busy}: busymod_work_func exit"]


def test_status_names_the_blocker(machine):
    from livefs.kernel.livepatch.status import render_status
    k = machine.k
    assert "no livepatches" in render_status(k)
    blocker = k.sched.spawn(TaskKind.KTHREAD, "blocker", func(k, "cmdline_proc_show"))
    machine.insmod(LP)
    text = render_status(k)
    assert "transition: 'test_klp_livepatch' to patched" in text
    assert f"{blocker.pid} blocker" in " ".join(text.split())
    assert "sleeping on function cmdline_proc_show" in text
