"""Why the kernel has a consistency model, shown by search: the A++/A--
workload keeps A at zero under hybrid, kpatch and kGraft, and hypothesis
finds the interleaving that breaks it under ``immediate``.  Also each model's
own signature in the transition record, and kGraft's limit."""

from __future__ import annotations

from hypothesis import HealthCheck, find, given, note, settings

from livefs.catalog import find as find_module
from livefs.kernel.clock import NSEC_PER_MSEC, NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.version import KernelVersion
from livefs.kernel.livepatch.consistency import ConsistencyModel
from livefs.kernel.livepatch.record import Cause
from livefs.kernel.tasks import TaskKind
from livefs.testing.consistency import Workload, run_workload, workloads

# the profile loaded for this run (livefs-ci unless --hypothesis-profile says otherwise)
SAFE = settings(suppress_health_check=[HealthCheck.too_slow])


def test_immediate_drifts_and_search_finds_it():
    failing = find(workloads(), lambda w: run_workload(ConsistencyModel.IMMEDIATE, w).A != 0,
                   settings=settings(derandomize=True, database=None, max_examples=400,
                                     suppress_health_check=list(HealthCheck)))
    drift = run_workload(ConsistencyModel.IMMEDIATE, failing).A
    print(f"\nimmediate: {failing!r} leaves A = {drift}")
    assert drift in (-1, 1)  # one worker held with one unit and dropped with the other
    # the same interleaving, under the models that wait for the hold to end
    for model in (ConsistencyModel.HYBRID, ConsistencyModel.KPATCH, ConsistencyModel.KGRAFT):
        assert run_workload(model, failing).A == 0, model


def test_the_minimal_failure_is_a_patch_during_a_hold():
    """One worker, a patch enabled while it sleeps in the old counter_hold:
    it wakes to the new counter_drop."""
    w = Workload(workers=1, hold_ms=1500, gap_ms=700, stagger_ms=0, steps=(("advance", 500), ("toggle", 0)))
    assert run_workload(ConsistencyModel.IMMEDIATE, w).A == 1 - 2
    out = run_workload(ConsistencyModel.HYBRID, w)
    assert out.A == 0
    record = out.kernel.livepatch.log.last()
    worker = next(t for t in record.tasks.values() if t.comm.startswith("kworker/u"))
    blocked = [why for _, _, tid, why in record.blocked if tid == worker.id]
    assert blocked and set(blocked) == {"sleeping on function counter_hold"}


@given(w=workloads())
@SAFE
def test_hybrid_keeps_A_at_zero(w):
    note(repr(w))
    assert run_workload(ConsistencyModel.HYBRID, w).A == 0


@given(w=workloads())
@SAFE
def test_kpatch_keeps_A_at_zero(w):
    assert run_workload(ConsistencyModel.KPATCH, w).A == 0


@given(w=workloads())
@SAFE
def test_kgraft_keeps_A_at_zero(w):
    assert run_workload(ConsistencyModel.KGRAFT, w).A == 0


def _machine(model: ConsistencyModel, ncpus: int = 2, version: str = "mainline") -> tuple[Kernel, object]:
    k = Kernel(ncpus=ncpus, consistency_model=model, version=KernelVersion.parse(version))
    return k, k.task_for(900_001, "bash")


def _patch(k: Kernel, shell) -> None:
    with k.syscall(shell):
        assert k.load_module(find_module("test_klp_livepatch")) == 0


def test_kgraft_limit_a_task_asleep_in_the_kernel_holds_it_for_ever():
    """A task sleeping uninterruptibly in the kernel, in code no patch
    touches: the hybrid model's stack check switches it at once; kGraft has
    no stack check, no signal wakes it, and the transition never ends."""
    outcomes = {}
    for model in (ConsistencyModel.HYBRID, ConsistencyModel.KGRAFT):
        k, shell = _machine(model)
        sleeper = k.sched.spawn(TaskKind.USER, "dsleep", k.vmlinux_func("ksys_read"), interruptible=False)
        _patch(k, shell)
        k.advance(60 * NSEC_PER_SEC)
        outcomes[model] = (k.livepatch.in_transition(), sleeper.patch_state)
        if model is ConsistencyModel.KGRAFT:
            record = k.livepatch.log.current
            assert record.blocked[-1][2:] == (sleeper.pid, "in the kernel")
            assert any(e[2] == "signal" for e in record.events)  # signals went out, and did not help
    assert outcomes[ConsistencyModel.HYBRID] == (False, -1)
    assert outcomes[ConsistencyModel.KGRAFT] == (True, 0)


def test_kpatch_switches_every_task_at_once_and_never_per_task():
    k, shell = _machine(ConsistencyModel.KPATCH)
    stuck = k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    _patch(k, shell)
    k.advance(2 * NSEC_PER_SEC + 1)
    with k.syscall(shell):  # a kernel exit: no switch under kpatch
        pass
    assert shell.patch_state == 0 and k.livepatch.in_transition()
    k.sched.wake(stuck)  # it leaves the patched function
    k.advance(NSEC_PER_SEC)
    record = k.livepatch.log.last()
    assert record.outcome == "complete"
    times = {t for t, _, _, cause in record.switches}
    causes = {cause for _, _, _, cause in record.switches}
    assert len(times) == 1 and causes == {Cause.STACK_CHECK}  # all together, in one stopped machine
    assert not any(e[2] == "signal" for e in record.events)


def test_immediate_completes_inside_the_write():
    k, shell = _machine(ConsistencyModel.IMMEDIATE)
    k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    _patch(k, shell)
    record = k.livepatch.log.last()
    assert record.outcome == "complete" and record.end_ns == record.start_ns
    assert {cause for _, _, _, cause in record.switches} == {Cause.IMMEDIATE}


def test_hybrid_record_names_each_cause():
    """One transition through every per-task switch point of the kernel's
    model, each recorded with its own cause."""
    # 6.12: the spinner switches in cond_resched() (v6.4-v6.15)
    k, shell = _machine(ConsistencyModel.HYBRID, ncpus=3, version="6.12")  # CPU 1 idles, the spinner has CPU 2
    blocker = k.sched.spawn(TaskKind.KTHREAD, "holder", k.vmlinux_func("cmdline_proc_show"))
    user = k.sched.spawn(TaskKind.USER, "reader", k.vmlinux_func("cmdline_proc_show"))
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    k.sched.spin(spinner, k.vmlinux_func("cmdline_proc_show"))
    _patch(k, shell)
    child = k.sched.fork(shell)  # the shell switched in the write: its child is born switched
    k.sched.spin(spinner, k.vmlinux_func("ksys_read"))  # leaves the patched code, still spinning
    k.advance(20 * NSEC_PER_MSEC)  # its own cond_resched switches it
    k.sched.fake_signal(user)  # back to user space: switches there (cause: the signal)
    with k.syscall(shell):
        assert k.livepatch.force_store(k.livepatch.transition_patch, b"1") == 0
    k.advance(NSEC_PER_SEC)  # the next attempt completes it
    record = k.livepatch.log.last()
    cause = {tid: c for _, _, tid, c in record.switches}
    assert cause[shell.pid] is Cause.STACK_CHECK
    assert cause[child.pid] is Cause.FORK
    assert cause[spinner.pid] is Cause.COND_RESCHED
    assert cause[user.pid] is Cause.FAKE_SIGNAL
    assert cause[blocker.pid] is Cause.FORCE
    assert cause[-2] is Cause.IDLE_LOOP  # CPU 1's idle task, kicked through its loop
    assert record.outcome == "forced"
    kinds = [e[2] for e in record.events if e[2] != "unsafe"]
    assert kinds[0] == "start" and kinds[-3:] == ["force", "attempt", "complete"]
    # force switched the holder while it slept in the old function; nobody else was in changed code
    assert [e[3] for e in record.events if e[2] == "unsafe"] == [f"{blocker.pid}:cmdline_proc_show"]
