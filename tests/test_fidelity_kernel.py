"""Kernel behaviour the model gets from the kernel source (issue 12): the
kthread API for module code, the cond_resched switch point per version,
klp_get_prev_state() outside a transition, dump_stack() of a positive init
return.  Virtual time only."""

from __future__ import annotations

import errno

import pytest

from livefs.catalog.api import CallContext, Func, Function, ModuleContext, ModuleDef, Object, Param, Patch
from livefs.kernel.clock import NSEC_PER_MSEC, NSEC_PER_SEC
from livefs.kernel.tasks import KLP_PATCHED, KLP_UNPATCHED, RunState, TaskKind

# -- 1. the kthread API ------------------------------------------------------------------------------


def _waiter(call: CallContext) -> int:
    """Sleeps in 10 ms steps while ``hold``; counts its sleeps."""
    ctx = call.module
    while ctx.param("hold") and not call.kthread_should_stop():
        call.msleep(10)
        ctx.data["sleeps"] = ctx.data.get("sleeps", 0) + 1
    return 0


def _loop(call: CallContext, tag: str) -> int:
    ctx = call.module
    ctx.data["started"] = call.kernel.clock.now_ns
    while not call.kthread_should_stop():
        call.kernel.call(call.task, ctx.name, "kt_wait")
        left = call.schedule_timeout(1000)  # until woken, or a second
        ctx.data.setdefault("woke", []).append(left)
    return 7


def _kt_init(ctx: ModuleContext) -> int:
    ctx.data["task"] = ctx.kthread_run("kt_loop", "kt_worker", "tag")
    return 0


def _kt_exit(ctx: ModuleContext) -> None:
    ctx.data["stopped"] = ctx.kthread_stop(ctx.data["task"])


KT_MOD = ModuleDef(
    name="kt_mod", description="a module with a kthread",
    params=[Param("hold", "bool", True, 0o644, "sleep in kt_wait")],
    functions=[Function("kt_wait", _waiter), Function("kt_loop", _loop)],
    init=_kt_init, exit=_kt_exit)


def _new_wait(call: CallContext) -> int:
    """A replacement that sleeps inside itself while lp_kt's own hold is set."""
    ctx = call.module
    while ctx.param("hold") and not call.kthread_should_stop():
        call.msleep(10)
    return 0


LP_KT = ModuleDef(
    name="lp_kt", description="livepatch of kt_wait", livepatch=True,
    params=[Param("hold", "bool", True, 0o644, "sleep in the replacement")],
    patch=Patch(objs=[Object("kt_mod", [Func("kt_wait", _new_wait, new_name="new_kt_wait")])]))


def _load(machine, defn: ModuleDef, args: str = "") -> int:
    with machine.k.syscall(machine.task("insmod")):
        return machine.k.load_module(defn, args)


def _names(task) -> list[str]:
    return [f.name for f in task.stack]


def test_kthread_runs_sleeps_inside_its_function_and_stops(machine):
    k = machine.k
    assert _load(machine, KT_MOD) == 0
    ctx = k.modules.get("kt_mod").ctx
    task = ctx.data["task"]
    assert task.comm == "kt_worker" and task.ppid == 2 and task.is_kthread
    assert k.tasks.get(task.pid) is task
    k.advance(55 * NSEC_PER_MSEC)
    # asleep in msleep() inside kt_wait(), called from kt_loop() of the kthread
    assert _names(task) == ["kthread", "kt_loop", "kt_wait", "msleep", "schedule"]
    assert task.state is RunState.SLEEPING and not task.interruptible
    assert ctx.data["sleeps"] == 5
    k.advance(45 * NSEC_PER_MSEC)
    assert ctx.data["sleeps"] == 10
    # hold off: kt_wait returns, the loop sleeps in schedule_timeout until woken
    ctx.set_param("hold", False)
    k.advance(10 * NSEC_PER_MSEC)
    assert _names(task) == ["kthread", "kt_loop", "schedule"] and task.interruptible
    k.advance(300 * NSEC_PER_MSEC)
    assert ctx.wake_up_process(task)
    assert "woke" not in ctx.data  # it runs once the caller lets the CPU go
    k.run_pending()
    assert ctx.data["woke"] == [700]
    # rmmod: kthread_stop() wakes it, it returns 7 and exits
    t0 = k.clock.now_ns
    assert machine.rmmod("kt_mod") == 0
    assert ctx.data["stopped"] == 7 and k.tasks.get(task.pid) is None
    assert k.clock.now_ns == t0 and k.wq.next_deadline() is None


def test_kthread_stop_ends_an_msleep_and_a_kthread_that_never_ran(machine):
    k = machine.k
    assert _load(machine, KT_MOD) == 0
    k.advance(25 * NSEC_PER_MSEC)
    ctx = k.modules.get("kt_mod").ctx
    assert machine.rmmod("kt_mod") == 0  # asleep in msleep(): the loop sees should_stop after it
    assert ctx.data["stopped"] == 7 and ctx.data["sleeps"] == 3
    # stopped before it ever ran: threadfn is not called, kthread_stop() is -EINTR
    with k.syscall(machine.task("insmod")):
        assert k.load_module(KT_MOD) == 0
        ctx = k.modules.get("kt_mod").ctx
        assert k.delete_module("kt_mod") == 0
    assert ctx.data["stopped"] == -errno.EINTR and "started" not in ctx.data


def test_replacement_function_sleeps_inside_itself_and_holds_the_transition(smp):
    k = smp.k
    assert _load(smp, KT_MOD) == 0
    k.advance(15 * NSEC_PER_MSEC)
    ctx = k.modules.get("kt_mod").ctx
    task = ctx.data["task"]
    assert _load(smp, LP_KT) == 0
    lp = k.livepatch
    assert lp.transition_patch is not None and task.patch_state == KLP_UNPATCHED  # asleep in kt_wait
    ctx.set_param("hold", False)  # kt_wait returns, the next call runs new_kt_wait
    k.advance(2 * NSEC_PER_SEC)
    assert lp.transition_patch is None and task.patch_state != KLP_UNPATCHED
    ctx.set_param("hold", True)
    k.advance(2 * NSEC_PER_SEC)
    assert _names(task) == ["kthread", "kt_loop", "new_kt_wait", "msleep", "schedule"]
    # unpatching waits for the kthread to leave the replacement
    assert smp.write("lp_kt", "enabled", b"0") == 0
    k.advance(3 * NSEC_PER_SEC)
    assert lp.transition_patch is not None and task.patch_state == KLP_PATCHED and task.patch_pending
    k.modules.get("lp_kt").ctx.set_param("hold", False)
    k.advance(2 * NSEC_PER_SEC)
    assert lp.transition_patch is None
    assert _names(task) == ["kthread", "kt_loop", "kt_wait", "msleep", "schedule"]


def test_msleep_outside_a_kthread_is_a_module_bug(machine):
    k = machine.k
    k.add_vmlinux_function("sleepy_show", lambda call: call.msleep(10))
    with pytest.raises(Exception):
        machine.cat("sleepy_show")
    assert any("msleep() outside a kthread" in line for line in machine.log())


def test_lp_busy_target_worker_is_an_api_kthread(smp):
    k = smp.k
    assert smp.insmod("lp_busy_target") == 0
    ctx = k.modules.get("lp_busy_target").ctx
    worker = ctx.data["worker"]
    assert k.sched.kthreads.of(worker) is not None
    k.advance(1 * NSEC_PER_SEC)
    assert _names(worker) == ["kthread", "worker_fn", "lp_busy_target_wait", "msleep", "schedule"]
    # at 1 s the tenth msleep(100) has ended and the eleventh begun: kthread_stop()
    # lets that one end, the loop counts it and sees should_stop
    assert smp.rmmod("lp_busy_target") == 0
    assert smp.log()[-2:] == ["lp_busy_target: original lp_busy_target_wait returns after 1100 ms",
                              "lp_busy_target: unloaded"]
    assert k.tasks.get(worker.pid) is None


# -- 2. the cond_resched switch point by version --------------------------------------------------

def _versioned(version: str):
    from conftest import Machine
    from livefs.kernel.kernel import Kernel
    from livefs.kernel.version import KernelVersion

    k = Kernel(version=KernelVersion.parse(version), ncpus=2)
    assert k.dyndbg.exec_queries("file kernel/livepatch/* +p\nfunc klp_try_switch_task -p") == 0
    return Machine(k)


@pytest.mark.parametrize("version, site", [("6.1", None), ("6.3", None), ("6.4", "cond_resched"),
                                           ("6.12", "cond_resched"), ("6.15", "cond_resched"),
                                           ("6.16", "__schedule"), ("mainline", "__schedule")])
def test_spinning_kthread_switches_in_cond_resched_only_from_6_4_to_6_15(version, site):
    m = _versioned(version)
    k = m.k
    key = k.jump_labels.key("klp_sched_try_switch_key")
    assert (key is None) == (site is None)
    if key is not None:
        assert [s.func.name for s in key.sites] == [site]
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    assert k.sched.spin(spinner, k.vmlinux_func("process_one_work"), cpu=1) == 0
    assert m.insmod("test_klp_livepatch") == 0
    assert spinner.patch_pending
    k.advance(50 * NSEC_PER_MSEC)  # its cond_resched() calls, before the first retry
    assert spinner.patch_pending == (site != "cond_resched")
    k.advance(5 * NSEC_PER_SEC)  # running: no stack check can switch it either
    assert spinner.patch_pending == (site != "cond_resched")
    assert (k.livepatch.transition_patch is None) == (site == "cond_resched")


def _freezable_loop(call: CallContext, tag: str) -> int:
    ctx = call.module
    while not call.kthread_should_stop():
        call.kernel.call(call.task, ctx.name, "kt_wait")
        call.schedule_timeout(5000, freezable=ctx.param("freezable"))
    return 0


FREEZE_MOD = ModuleDef(
    name="kt_mod", description="a kthread that sleeps freezable or not",
    params=[Param("hold", "bool", True, 0o644, "sleep in kt_wait"),
            Param("freezable", "bool", True, 0o644, "TASK_FREEZABLE sleeps in the loop")],
    functions=[Function("kt_wait", _waiter), Function("kt_loop", _freezable_loop)],
    init=_kt_init, exit=_kt_exit)


@pytest.mark.parametrize("version, freezable, at_once", [("mainline", True, True), ("mainline", False, False),
                                                        ("6.16", True, True), ("6.12", True, False)])
def test_freezable_sleep_switches_in_schedule_from_6_16(version, freezable, at_once):
    m = _versioned(version)
    k = m.k
    assert _load(m, FREEZE_MOD, f"freezable={int(freezable)}") == 0
    k.advance(15 * NSEC_PER_MSEC)
    ctx = k.modules.get("kt_mod").ctx
    task = ctx.data["task"]
    assert _load(m, LP_KT) == 0
    assert task.patch_pending  # asleep in kt_wait, which the patch replaces
    ctx.set_param("hold", False)
    k.advance(20 * NSEC_PER_MSEC)  # kt_wait returns and the loop goes to sleep, long before the retry
    assert [f.name for f in task.stack] == ["kthread", "kt_loop", "schedule"]
    assert task.patch_pending != at_once
    k.advance(2 * NSEC_PER_SEC)
    assert not task.patch_pending and k.livepatch.transition_patch is None


# -- 3. klp_get_prev_state() outside a transition --------------------------------------------------

def _asks_prev_state(ctx: ModuleContext) -> int:
    ctx.data["prev"] = [ctx.klp_get_prev_state(1), ctx.klp_get_prev_state(1)]
    return 0


def test_klp_get_prev_state_outside_a_transition_warns_once(machine):
    k = machine.k
    from livefs.kernel.panic import TAINT_WARN, taint_string
    assert not k.modules.tainted & (1 << TAINT_WARN)
    asker = ModuleDef(name="prev_asker", description="calls klp_get_prev_state() from init",
                      init=_asks_prev_state, exit=lambda ctx: None)
    assert _load(machine, asker) == 0
    assert k.modules.get("prev_asker").ctx.data["prev"] == [None, None]
    log = machine.log()
    assert log.count("------------[ cut here ]------------") == 1  # WARN_ON_ONCE: the first call only
    i = log.index("------------[ cut here ]------------")
    assert log[i + 1].startswith("WARNING: CPU: 0 PID: ")  # WARN_ON(): no message line
    assert log[i + 1].endswith(" at kernel/livepatch/state.c:69 klp_get_prev_state+0x0/0x40")
    assert log[-1] == "---[ end trace 0000000000000000 ]---"
    assert k.modules.tainted & (1 << TAINT_WARN) and taint_string(k)[9] == "W"
    # once per boot: a second module asking again says nothing
    machine.set_mark()
    assert _load(machine, ModuleDef(name="prev_asker2", description="again", init=_asks_prev_state,
                                    exit=lambda ctx: None)) == 0
    assert "------------[ cut here ]------------" not in machine.log()


def test_klp_get_prev_state_in_a_transition_does_not_warn(machine):
    k = machine.k
    assert machine.insmod("test_klp_state") == 0
    assert machine.insmod("test_klp_state2") == 0  # its callbacks ask for the previous state
    k.settle()
    assert "------------[ cut here ]------------" not in machine.log()
    assert not k.warned_once


# -- 4. dump_stack() of a positive init return ------------------------------------------------------

def _recorded_dump(name: str) -> list[str]:
    """The dump_stack() after "loading module anyway..." in a 6.12 recording,
    without the unwinder's ``? func`` guesses (stale addresses on that stack)."""
    from pathlib import Path
    lines = (Path(__file__).parent / "transcripts" / "6.12" / name).read_text().splitlines()
    start = lines.index("  dmesg| do_init_module: loading module anyway...") + 1
    end = lines.index("  dmesg|  </TASK>", start) + 1
    return [ln[len("  dmesg| "):] for ln in lines[start:end] if not ln.startswith("  dmesg|  ? ")]


@pytest.mark.parametrize("recording", ["params.txt", "callbacks.txt"])
def test_positive_init_return_dumps_the_finit_module_path_as_6_12_does(recording):
    m = _versioned("6.12")
    assert m.insmod("lp_callbacks", "pre_patch_ret=16") == 0
    log = m.log()
    at = next(i for i, t in enumerate(log) if t.endswith("\ndo_init_module: loading module anyway...")) + 1
    ours = log[at:log.index(" </TASK>", at) + 1]
    real = _recorded_dump(recording)
    # the first line: this CPU, pid and build; the hardware line: that VM's BIOS
    assert ours[0].startswith("CPU: 0 UID: 0 PID: ") and " Comm: insmod Tainted: G           OE K    6.12.0-livefs #1  " \
        in ours[0]
    assert real[0].split(" Comm: ")[1].split(" 6.12.")[0] == ours[0].split(" Comm: ")[1].split(" 6.12.")[0]
    assert ours[2].startswith("Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS ")
    regs = ours.index("RIP: 0033:0x7f5a65e88829")
    assert ours[1:2] + ours[3:regs] == real[1:2] + real[3:regs]  # the frames, with 6.12's offsets
    # the user-space registers at the syscall (ASLR'd addresses differ per run; which lines do not)
    assert [ln.split(":")[0] for ln in ours[regs:]] == [ln.split(":")[0] for ln in real[regs:]]
    assert "ORIG_RAX: 0000000000000139" in ours[regs + 2] and "ORIG_RAX: 0000000000000139" in real[regs + 2]
    assert [ln.split("+")[0].strip() for ln in ours[6:12]] == [
        "do_init_module", "init_module_from_file", "idempotent_init_module", "__x64_sys_finit_module",
        "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]


def test_positive_init_return_before_6_4_goes_through_load_module():
    m = _versioned("6.1")
    assert m.insmod("lp_callbacks", "pre_patch_ret=16") == 0
    log = m.log()
    at = log.index(" dump_stack_lvl+0x64/0x80") + 1
    assert [ln.split("+")[0].strip() for ln in log[at:at + 5]] == [
        "do_init_module", "load_module", "__do_sys_finit_module", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
    assert log[at + 5] == "RIP: 0033:0x7f5a65e88829"


def test_shutdown_ends_parked_kthreads(machine):
    import threading
    k = machine.k
    assert _load(machine, KT_MOD) == 0
    k.advance(25 * NSEC_PER_MSEC)
    kt = k.sched.kthreads.of(k.modules.get("kt_mod").ctx.data["task"])
    assert kt.thread.is_alive()
    k.sched.kthreads.shutdown()  # a machine thrown away: its kthreads' Python threads end
    kt.thread.join(5)
    assert not kt.thread.is_alive() and not k.sched.kthreads.threads
