"""The transition record, entry by entry, and the status view's reasons, in
virtual time: what ``livefs timeline`` and ``livefs status --json`` draw
from, checked whole (mutation testing found them checked only in part)."""

from __future__ import annotations

from livefs.catalog import find
from livefs.kernel.clock import NSEC_PER_MSEC, NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.livepatch.consistency import ConsistencyModel
from livefs.kernel.livepatch.record import Cause
from livefs.kernel.livepatch.transition import klp_check_task
from livefs.kernel.printk import KERN_DEBUG
from livefs.kernel.tasks import KLP_PATCHED, KLP_UNPATCHED, TaskKind
from livefs.kernel.version import KernelVersion

LP = "test_klp_livepatch"


def _machine(model: ConsistencyModel = ConsistencyModel.HYBRID, version: str = "mainline") -> tuple[Kernel, object]:
    k = Kernel(ncpus=2, version=KernelVersion.parse(version), consistency_model=model)
    k.dyndbg.exec_queries("file kernel/livepatch/* +p")
    return k, k.task_for(900_001, "bash")


def _enable(k: Kernel, shell) -> None:
    with k.syscall(shell):
        assert k.load_module(find(LP)) == 0


def _write(k: Kernel, shell, attr: str, value: bytes) -> None:
    with k.syscall(shell):
        store = k.livepatch.enabled_store if attr == "enabled" else k.livepatch.force_store
        assert store(k.livepatch.transition_patch, value) == 0


def test_a_stalled_forced_transition_recorded_whole():
    k, shell = _machine()
    stuck = k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    t0 = k.clock.now_ns
    _enable(k, shell)
    k.advance(2 * NSEC_PER_SEC + 100 * NSEC_PER_MSEC)  # two retries
    _write(k, shell, "force", b"1")
    k.advance(NSEC_PER_SEC + 100 * NSEC_PER_MSEC)  # the retry that completes it
    record = k.livepatch.log.last()
    assert (record.patch, record.target, record.model, record.outcome) == (LP, "patched", "hybrid", "forced")
    assert record.start_ns == t0 and record.end_ns == k.livepatch.log.last().events[-1][0]
    kinds = [(attempt, kind) for _, attempt, kind, _ in record.events]
    assert kinds == [(0, "start"), (1, "attempt"), (2, "attempt"), (3, "attempt"), (3, "force"),
                     (3, "unsafe"), (4, "attempt"), (4, "complete")]
    details = {kind: detail for _, _, kind, detail in record.events}
    assert details["start"] == "patching" and details["complete"] == "patching"
    assert details["unsafe"] == f"{stuck.pid}:cmdline_proc_show"
    # the stuck kthread: blocked at each of the first three attempts, then forced
    assert [(a, why) for _, a, tid, why in record.blocked if tid == stuck.pid] == [
        (1, "sleeping on function cmdline_proc_show"), (2, "sleeping on function cmdline_proc_show"),
        (3, "sleeping on function cmdline_proc_show")]
    assert [(a, c) for _, a, tid, c in record.switches if tid == stuck.pid] == [(3, Cause.FORCE)]
    # the shell switched in the write, by its own stack check; every task is named
    assert [(a, c) for _, a, tid, c in record.switches if tid == shell.pid] == [(1, Cause.STACK_CHECK)]
    assert record.tasks[stuck.pid].comm == "stuck" and record.tasks[stuck.pid].kind == "kthread"
    assert record.tasks[-1].pid == 0 and record.tasks[-1].comm == "swapper/0"
    assert sorted(record.initial_pending) == sorted(record.tasks)
    counts = record.counts()
    assert counts["force"] == 1 and counts["blocked checks"] == len(record.blocked) and counts["signals"] == 0
    assert record.attempts() == 4


def test_reversal_and_cancel_outcomes_and_attempts_restart():
    k, shell = _machine()
    k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    _enable(k, shell)
    k.advance(NSEC_PER_SEC + 100 * NSEC_PER_MSEC)
    _write(k, shell, "enabled", b"0")  # reverse: the stuck task never switched, so it is done at once
    # the next retry kicks the idle CPU back through its loop; the one after completes
    k.advance(2 * NSEC_PER_SEC + 100 * NSEC_PER_MSEC)
    record = k.livepatch.log.last()
    assert record.target == "patched, reversed to unpatched" and record.outcome == "complete"
    kinds = [(attempt, kind, detail) for _, attempt, kind, detail in record.events]
    assert (2, "reverse", "patching to unpatching") in kinds
    assert kinds[kinds.index((2, "reverse", "patching to unpatching")) + 1] == (0, "start", "unpatching")
    assert kinds[-3:] == [(1, "attempt", ""), (2, "attempt", ""), (2, "complete", "unpatching")]
    # a pre-patch callback that fails: the transition is canceled before it starts
    k2, shell2 = _machine()
    with k2.syscall(shell2):
        assert k2.load_module(find("test_klp_callbacks_demo"), "pre_patch_ret=-19") == -19
    record = k2.livepatch.log.last()
    assert record.outcome == "canceled" and [e[2] for e in record.events] == ["cancel", "complete"]


def test_fork_and_exit_mid_transition():
    k, shell = _machine()
    parent = k.sched.spawn(TaskKind.USER, "parent", k.vmlinux_func("cmdline_proc_show"), interruptible=False)
    _enable(k, shell)
    pending_child = k.sched.fork(parent)
    switched_child = k.sched.fork(shell)
    k.sched.exit(pending_child)
    record = k.livepatch.log.current
    assert (pending_child.patch_state, switched_child.patch_state) == (KLP_UNPATCHED, KLP_PATCHED)
    assert [(kind, detail) for _, _, kind, detail in record.events if kind == "pending"] == [
        ("pending", str(pending_child.pid))]
    causes = {tid: c for _, _, tid, c in record.switches}
    assert causes[switched_child.pid] is Cause.FORK and causes[pending_child.pid] is Cause.EXIT
    assert record.tasks[pending_child.pid].comm == "parent"


def test_why_a_task_waits_as_status_says_it():
    k, shell = _machine(version="6.12")
    stuck = k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    k.sched.spin(spinner, k.vmlinux_func("cmdline_proc_show"))
    first = k.printk.next_seq
    _enable(k, shell)
    lp = k.livepatch
    assert klp_check_task(lp, stuck) == "sleeping on function cmdline_proc_show"
    assert klp_check_task(lp, spinner) == "running"
    assert klp_check_task(lp, shell) is None
    debug = [r.text for r in k.printk.records if r.seq >= first and r.level == KERN_DEBUG
             and "klp_try_switch_task" in r.text]
    assert f"livepatch: klp_try_switch_task: spinner:{spinner.pid} is running" in debug
    assert f"livepatch: klp_try_switch_task: stuck:{stuck.pid} is sleeping on function cmdline_proc_show" in debug
    record = lp.log.current
    assert ("running" in {why for _, _, tid, why in record.blocked if tid == spinner.pid})
    # under kGraft there is no stack check: a task in the kernel just waits
    k2, shell2 = _machine(ConsistencyModel.KGRAFT)
    sleeper = k2.sched.spawn(TaskKind.USER, "reader", k2.vmlinux_func("ksys_read"), interruptible=False)
    _enable(k2, shell2)
    assert klp_check_task(k2.livepatch, sleeper) == "in the kernel"
    assert [why for _, _, tid, why in k2.livepatch.log.current.blocked if tid == sleeper.pid] == ["in the kernel"]


def test_immediate_and_kpatch_record_their_switches():
    k, shell = _machine(ConsistencyModel.IMMEDIATE)
    stuck = k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    _enable(k, shell)
    record = k.livepatch.log.last()
    assert {c for _, _, _, c in record.switches} == {Cause.IMMEDIATE}
    assert len(record.switches) == len(record.tasks)
    assert [d for _, _, kind, d in record.events if kind == "unsafe"] == [f"{stuck.pid}:cmdline_proc_show"]
    k2, shell2 = _machine(ConsistencyModel.KPATCH)
    stuck2 = k2.sched.spawn(TaskKind.KTHREAD, "stuck", k2.vmlinux_func("cmdline_proc_show"))
    _enable(k2, shell2)
    record = k2.livepatch.log.current
    assert record.switches == [] and [(tid, why) for _, _, tid, why in record.blocked] == [
        (stuck2.pid, "sleeping on function cmdline_proc_show")]


def test_kgraft_switch_points_and_reasons():
    """Under kGraft each task switches only where it holds no kernel state:
    a user task in user space, a kthread waiting at the top of its loop, an
    idle task resumed in its idle loop; a running task is reported running,
    one asleep in the kernel as in the kernel."""
    k, shell = _machine(ConsistencyModel.KGRAFT, version="6.12")
    user = k.sched.spawn(TaskKind.USER, "idle-user", None)
    looping = k.sched.spawn(TaskKind.KTHREAD, "looping", None)
    inside = k.sched.spawn(TaskKind.KTHREAD, "inside", k.vmlinux_func("ksys_read"))
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    k.sched.spin(spinner, k.vmlinux_func("ksys_read"))
    _enable(k, shell)
    record = k.livepatch.log.current
    first = {tid: c for _, a, tid, c in record.switches if a == 1}
    assert first[user.pid] is Cause.RETURN_TO_USER
    assert first[looping.pid] is Cause.KTHREAD_LOOP
    assert first[-1] is Cause.IDLE_LOOP  # CPU 0's idle task: CPU 0 runs the writer, so it waits in do_idle()
    why = {tid: w for _, _, tid, w in record.blocked}
    assert why[inside.pid] == "in the kernel" and why[spinner.pid] == "running"
    assert inside.pid not in first and spinner.pid not in first
