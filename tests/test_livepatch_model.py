"""The livepatch core in virtual time: exact log sequences and state rules."""

from __future__ import annotations

import errno

import pytest

from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.livepatch.core import kstrtobool
from livefs.kernel.livepatch.transition import klp_retry_delay_ns
from livefs.kernel.tasks import KLP_PATCHED, KLP_UNDEFINED, KLP_UNPATCHED, Task, TaskKind

LP = "test_klp_livepatch"
ORIGINAL = "BOOT_IMAGE=/boot/vmlinuz-livefs root=/dev/vda1 ro console=ttyS0 quiet\n"


def load_block(mod: str, middle: tuple[list[str], list[str]] = ([], [])) -> list[str]:
    pre, post = middle
    return [f"livepatch: enabling patch '{mod}'",
            f"livepatch: '{mod}': initializing patching transition", *pre,
            f"livepatch: '{mod}': starting patching transition",
            f"livepatch: '{mod}': completing patching transition", *post,
            f"livepatch: '{mod}': patching complete"]


def disable_block(mod: str, middle: tuple[list[str], list[str]] = ([], [])) -> list[str]:
    pre, post = middle
    return [f"livepatch: '{mod}': initializing unpatching transition", *pre,
            f"livepatch: '{mod}': starting unpatching transition",
            f"livepatch: '{mod}': completing unpatching transition", *post,
            f"livepatch: '{mod}': unpatching complete"]


def sleeper(machine, func_name: str, obj: str = "vmlinux", comm: str = "kworker/1:2") -> Task:
    """A kthread sleeping inside ``func_name`` (which may be a replacement)."""
    k = machine.k
    func = k.symbols.find(obj, func_name)[0]
    task = Task(k.tasks.new_pid(), comm, TaskKind.KTHREAD, ppid=2,
                stack=[k.vmlinux_func("kthread"), func, k.vmlinux_func("schedule")])
    return k.tasks.add(task)


def test_basic_patching_transcript_and_effect(machine):
    assert machine.cat() == ORIGINAL
    assert machine.insmod(LP) == 0
    assert machine.log() == load_block(LP)
    assert machine.cat() == "test_klp_livepatch: this has been live patched\n"
    mod = machine.k.modules.get(LP)
    assert mod.refcnt == 1
    assert machine.rmmod(LP) == -errno.EWOULDBLOCK
    machine.set_mark()
    assert machine.write(LP, "enabled", b"0\n") == 0
    assert machine.log() == disable_block(LP)
    assert machine.patches() == []  # freed at once: the free work is zero-delay
    assert mod.refcnt == 0
    assert machine.cat() == ORIGINAL
    assert machine.rmmod(LP) == 0
    assert machine.k.modules.get(LP) is None


def test_debug_lines_follow_dynamic_debug(machine):
    machine.k.dyndbg.exec_queries("file kernel/livepatch/* -p")
    machine.insmod(LP)
    assert machine.log() == [f"livepatch: enabling patch '{LP}'", f"livepatch: '{LP}': starting patching transition",
                             f"livepatch: '{LP}': patching complete"]


def test_taint_messages_once_per_boot(machine):
    machine.insmod(LP)
    texts = [r.text for r in machine.k.printk.records][1:]  # after the boot banner
    assert texts[:3] == [f"{LP}: loading out-of-tree module taints kernel.",
                         f"{LP}: tainting kernel with TAINT_LIVEPATCH",
                         f"{LP}: module verification failed: signature and/or required key missing - tainting kernel"]
    machine.insmod("test_klp_atomic_replace")
    assert sum("taint" in r.text for r in machine.k.printk.records) == 3
    assert machine.k.modules.tainted == 45056
    assert machine.k.modules.get(LP).taint_letters == "OEK"


def test_stacked_patches_and_stack_order(machine):
    for mod in (LP, "test_klp_callbacks_demo", "test_klp_syscall"):
        assert machine.insmod(mod) == 0
    lp = machine.k.livepatch
    assert [lp.stack_order(p) for p in lp.sysfs_patches] == [1, 2, 3]
    assert machine.write("test_klp_callbacks_demo", "enabled", b"0") == 0
    assert machine.rmmod("test_klp_callbacks_demo") == 0
    assert {p.name: lp.stack_order(p) for p in lp.sysfs_patches} == {LP: 1, "test_klp_syscall": 2}


def test_atomic_replace_frees_older_patches_without_callbacks(machine):
    machine.insmod(LP)
    machine.insmod("test_klp_callbacks_demo")
    machine.set_mark()
    assert machine.insmod("test_klp_atomic_replace", "replace=1") == 0
    assert machine.log() == load_block("test_klp_atomic_replace")
    assert machine.patches() == ["test_klp_atomic_replace"]
    assert machine.cat() == ORIGINAL
    assert machine.cat("meminfo_proc_show") == "test_klp_atomic_replace: this has been live patched\n"
    for mod in (LP, "test_klp_callbacks_demo"):
        assert machine.k.modules.get(mod).refcnt == 0
        assert machine.rmmod(mod) == 0
    # the nop functions and dynamic objects are gone after the transition
    patch = machine.k.livepatch.sysfs_patches[0]
    assert [o.sysfs_name for o in patch.objs] == ["vmlinux"]
    assert [f.sysfs_name for f in patch.objs[0].funcs] == ["meminfo_proc_show,1"]


def test_replace_zero_stacks(machine):
    machine.insmod(LP)
    machine.insmod("test_klp_atomic_replace", "replace=0")
    assert machine.patches() == [LP, "test_klp_atomic_replace"]
    assert machine.cat().startswith("test_klp_livepatch")
    assert machine.cat("meminfo_proc_show").startswith("test_klp_atomic_replace")


def test_callbacks_and_late_module(machine):
    demo = "test_klp_callbacks_demo"
    mod = "test_klp_callbacks_mod"
    live, coming, going = ("[MODULE_STATE_LIVE] Normal state",
                           "[MODULE_STATE_COMING] Full formed, running module_init",
                           "[MODULE_STATE_GOING] Going away")
    assert machine.insmod(demo) == 0
    assert machine.log() == load_block(demo, ([f"{demo}: pre_patch_callback: vmlinux"],
                                              [f"{demo}: post_patch_callback: vmlinux"]))
    patch = machine.k.livepatch.find_sysfs_patch(demo)
    obj = next(o for o in patch.objs if o.name == mod)
    assert not obj.patched
    machine.set_mark()
    assert machine.insmod(mod) == 0
    assert machine.log() == [f"livepatch: applying patch '{demo}' to loading module '{mod}'",
                             f"{demo}: pre_patch_callback: {mod} -> {coming}",
                             f"{demo}: post_patch_callback: {mod} -> {coming}",
                             f"{mod}: test_klp_callbacks_mod_init"]
    assert obj.patched
    machine.set_mark()
    assert machine.rmmod(mod) == 0
    assert machine.log() == [f"{mod}: test_klp_callbacks_mod_exit",
                             f"{demo}: pre_unpatch_callback: {mod} -> {going}",
                             f"livepatch: reverting patch '{demo}' on unloading module '{mod}'",
                             f"{demo}: post_unpatch_callback: {mod} -> {going}"]
    assert not obj.patched
    machine.insmod(mod)
    machine.set_mark()
    machine.write(demo, "enabled", b"0")
    assert machine.log() == disable_block(demo, (
        [f"{demo}: pre_unpatch_callback: vmlinux", f"{demo}: pre_unpatch_callback: {mod} -> {live}"],
        [f"{demo}: post_unpatch_callback: vmlinux", f"{demo}: post_unpatch_callback: {mod} -> {live}"]))


def test_pre_patch_failure_cancels(machine):
    demo = "test_klp_callbacks_demo"
    assert machine.insmod(demo, "pre_patch_ret=-19") == -errno.ENODEV
    assert machine.log() == [
        f"livepatch: enabling patch '{demo}'",
        f"livepatch: '{demo}': initializing patching transition",
        f"{demo}: pre_patch_callback: vmlinux",
        "livepatch: pre-patch callback failed for object 'vmlinux'",
        f"livepatch: failed to enable patch '{demo}'",
        f"livepatch: '{demo}': canceling patching transition, going to unpatch",
        f"livepatch: '{demo}': completing unpatching transition",
        f"livepatch: '{demo}': unpatching complete"]
    assert machine.patches() == [] and machine.k.modules.get(demo) is None
    assert all(t.patch_state == KLP_UNDEFINED for t in machine.k.tasks.all_with_idle())


def test_module_coming_refused_by_pre_patch(machine):
    demo, mod = "test_klp_callbacks_demo", "test_klp_callbacks_mod"
    machine.insmod(demo)
    dmod = machine.k.modules.get(demo)
    assert machine.k.modules.param_store(dmod, "pre_patch_ret", b"-19\n") == 0
    machine.set_mark()
    assert machine.insmod(mod) == -errno.ENODEV
    assert machine.log() == [
        f"livepatch: applying patch '{demo}' to loading module '{mod}'",
        f"{demo}: pre_patch_callback: {mod} -> [MODULE_STATE_COMING] Full formed, running module_init",
        f"livepatch: pre-patch callback failed for object '{mod}'",
        f"livepatch: patch '{demo}' failed for module '{mod}', refusing to load module '{mod}'"]
    assert machine.k.modules.get(mod) is None


def test_ftrace_disabled_refuses_patch_and_sysctl_refused_while_patched(machine):
    assert machine.k.ftrace.set_sysctl(0) == 0
    assert machine.insmod(LP) == -errno.EBUSY
    assert machine.log() == [
        f"livepatch: enabling patch '{LP}'",
        f"livepatch: '{LP}': initializing patching transition",
        "livepatch: failed to register ftrace handler for function 'cmdline_proc_show' (-16)",
        "livepatch: failed to patch object 'vmlinux'",
        f"livepatch: failed to enable patch '{LP}'",
        f"livepatch: '{LP}': canceling patching transition, going to unpatch",
        f"livepatch: '{LP}': completing unpatching transition",
        f"livepatch: '{LP}': unpatching complete"]
    assert machine.k.ftrace.set_sysctl(1) == 0
    assert machine.insmod(LP) == 0
    assert machine.k.ftrace.set_sysctl(0) == -errno.EBUSY
    assert machine.k.ftrace.enabled


def test_patch_of_unloaded_object_registers_nothing(machine):
    assert machine.insmod("test_klp_mod_patch") == 0
    assert machine.k.ftrace.set_sysctl(0) == 0  # no ops registered: allowed
    assert machine.k.ftrace.set_sysctl(1) == 0


@pytest.mark.parametrize("data,value", [
    (b"1", True), (b"y", True), (b"Y", True), (b"t", True), (b"T", True), (b"on", True), (b"oN", True),
    (b"yes", True), (b"10", True), (b"1x", True), (b"0", False), (b"n", False), (b"N", False),
    (b"f", False), (b"F", False), (b"off", False), (b"of", False),
    (b"2", None), (b"-1", None), (b"abc", None), (b" 1", None), (b"o", None), (b"", None)])
def test_kstrtobool(data, value):
    assert kstrtobool(data) is value


def test_enabled_and_force_write_errors(machine):
    machine.insmod(LP)
    machine.set_mark()
    for data in (b"1", b"1\n", b"y", b"2", b"-1", b"abc", b" 1"):
        assert machine.write(LP, "enabled", data) == -errno.EINVAL
    for data in (b"1", b"y", b"2", b"abc"):
        assert machine.write(LP, "force", data) == -errno.EINVAL
    for data in (b"0", b"n"):
        assert machine.write(LP, "force", data) == 0
    assert machine.log() == []
    assert machine.k.livepatch.find_sysfs_patch(LP).enabled


def test_blocked_transition_retries_each_second_and_completes_when_woken(machine):
    k = machine.k
    machine.insmod(LP)
    worker = sleeper(machine, "livepatch_cmdline_proc_show", obj=LP)
    machine.set_mark()
    assert machine.write(LP, "enabled", b"0") == 0
    lp = k.livepatch
    assert lp.transition_patch is not None and lp.target_state == KLP_UNPATCHED
    assert worker.patch_state == KLP_PATCHED and worker.patch_pending
    assert machine.shell.patch_state == KLP_UNPATCHED
    # switched readers already see the original; the sleeper is still "inside" the new code
    assert machine.cat() == ORIGINAL
    due = k.wq.next_deadline()
    assert due is not None and 0.5 * NSEC_PER_SEC <= due - k.clock.now_ns <= 1.5 * NSEC_PER_SEC
    k.advance(10 * NSEC_PER_SEC)
    assert lp.transition_patch is not None
    worker.stack.pop(1)  # it returns from the patched function
    k.advance(2 * NSEC_PER_SEC)
    assert lp.transition_patch is None
    assert machine.log()[-1] == f"livepatch: '{LP}': unpatching complete"
    assert machine.patches() == []


def test_signals_on_sixteenth_attempt_then_every_fifteen(machine):
    """klp_try_complete_transition() sends signals when the attempts before it
    number a non-zero multiple of SIGNALS_TIMEOUT (15): attempts 16, 31, 46 …
    The first attempt is the synchronous one inside the write; the retries
    come where round_jiffies_relative(HZ) and the timer wheel put them.  The stuck kthread's
    "is sleeping" debug line counts the attempts, and its wakeup count (what
    klp_send_signals() does to a kthread) says which attempts signalled."""
    k = machine.k
    machine.insmod(LP)
    stuck = sleeper(machine, "livepatch_cmdline_proc_show", obj=LP)
    assert k.dyndbg.exec_queries("func klp_try_switch_task +p") == 0
    k.advance(NSEC_PER_SEC * 3 // 10 - k.clock.now_ns)  # the write at 0.3 s
    start = k.clock.now_ns
    attempts: list[tuple[int, int]] = []  # (time since the write, signals so far) per attempt
    notices: list[int] = []

    def listen(record) -> None:
        if record.text.endswith(f"{stuck.comm}:{stuck.pid} is sleeping on function cmdline_proc_show"):
            attempts.append((record.ts_ns - start, stuck.wakeups))
        elif record.text == "livepatch: signaling remaining tasks":
            notices.append(len(attempts))

    k.printk.listeners.append(listen)
    assert machine.write(LP, "enabled", b"0") == 0
    expected = [k.jiffies()]  # attempt 1 in the write, then each retry where the timer wheel puts it
    while len(expected) < 51:
        expected.append(kernel_retry_jiffy(expected[-1]))
    k.run_until(jiffy_ns(expected[-1]))
    assert [t for t, _ in attempts] == [jiffy_ns(j) - start if i else 0 for i, j in enumerate(expected)]
    # signals so far, seen at attempt n (1-based): one more after each of 16, 31, 46
    assert [w for _, w in attempts] == [sum(1 for s in (16, 31, 46) if s < n) for n in range(1, 52)]
    assert stuck.wakeups == 3
    assert notices == [16]  # the notice once per transition, in the 16th attempt
    assert 14 * NSEC_PER_SEC < attempts[15][0] < 16 * NSEC_PER_SEC  # the notice about 15 s after the write


def test_force_unpatch_pins_module(machine):
    k = machine.k
    machine.insmod(LP)
    sleeper(machine, "livepatch_cmdline_proc_show", obj=LP)
    machine.write(LP, "enabled", b"0")
    machine.set_mark()
    assert machine.write(LP, "force", b"1") == 0
    assert machine.log() == ["livepatch: forcing remaining tasks to the patched state"]
    assert k.livepatch.transition_patch is not None  # completes at the next retry
    k.advance(2 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is None and machine.patches() == []
    assert k.modules.get(LP).refcnt == 1
    assert machine.rmmod(LP) == -errno.EWOULDBLOCK


def test_force_patching_does_not_pin(machine):
    k = machine.k
    sleeper(machine, "cmdline_proc_show")
    machine.insmod(LP)
    assert k.livepatch.transition_patch is not None
    assert machine.write(LP, "force", b"1") == 0
    k.advance(2 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is None
    machine.write(LP, "enabled", b"0")
    k.settle()
    assert k.modules.get(LP).refcnt == 0


def test_reversal_patching_to_unpatching(machine):
    k = machine.k
    sleeper(machine, "cmdline_proc_show")
    machine.insmod(LP)
    patch = k.livepatch.find_sysfs_patch(LP)
    assert patch.enabled and k.livepatch.transition_patch is patch
    assert machine.write(LP, "enabled", b"1") == -errno.EINVAL  # already heading there
    machine.set_mark()
    assert machine.write(LP, "enabled", b"0") == 0
    assert machine.log() == [f"livepatch: '{LP}': reversing transition from patching to unpatching",
                             f"livepatch: '{LP}': starting unpatching transition"]
    assert not patch.enabled
    k.advance(3 * NSEC_PER_SEC)
    assert machine.log()[-1] == f"livepatch: '{LP}': unpatching complete"
    assert machine.patches() == [] and k.modules.get(LP).refcnt == 0


def test_reversal_unpatching_to_patching(machine):
    k = machine.k
    machine.insmod(LP)
    sleeper(machine, "livepatch_cmdline_proc_show", obj=LP)
    machine.write(LP, "enabled", b"0")
    machine.set_mark()
    assert machine.write(LP, "enabled", b"1") == 0
    assert machine.log() == [f"livepatch: '{LP}': reversing transition from unpatching to patching",
                             f"livepatch: '{LP}': starting patching transition"]
    k.advance(3 * NSEC_PER_SEC)
    assert machine.log()[-1] == f"livepatch: '{LP}': patching complete"
    assert k.livepatch.find_sysfs_patch(LP).enabled


def test_second_enable_during_transition_is_busy_and_silent(machine):
    sleeper(machine, "cmdline_proc_show")
    machine.insmod(LP)
    machine.set_mark()
    assert machine.insmod("test_klp_atomic_replace") == -errno.EBUSY
    assert machine.log() == []
    assert machine.patches() == [LP]
    assert machine.k.modules.get("test_klp_atomic_replace") is None


def test_two_patches_on_one_function_during_transition(machine):
    k = machine.k
    machine.insmod("livepatch_sample")
    blocker = sleeper(machine, "livepatch_cmdline_proc_show", obj="livepatch_sample")
    machine.insmod(LP)
    # the blocker sleeps in the previous patch's code: that is what it would leave
    assert k.livepatch.transition_patch is not None
    assert blocker.patch_state == KLP_UNPATCHED
    assert machine.cat(task=blocker) == "this has been live patched\n"
    assert machine.cat() == "test_klp_livepatch: this has been live patched\n"


def test_fork_inherits_patch_state(machine):
    """klp_copy_process(): a child is exactly as switched as its parent, not
    born at the target -- fork from a parent that has not switched yet (it
    sleeps in the function being patched) gives a pending child at the
    initial state; fork from one that switched gives a switched child."""
    k = machine.k
    parent = k.sched.spawn(TaskKind.USER, "parent", k.vmlinux_func("cmdline_proc_show"))
    machine.insmod(LP)
    assert k.livepatch.target_state == KLP_PATCHED
    assert (parent.patch_state, parent.patch_pending) == (KLP_UNPATCHED, True)
    staged = k.sched.fork(parent)
    seen = k.task_for(7776, "cat", ppid=parent.pid)  # a real process the model meets
    for child in (staged, seen):
        assert (child.patch_state, child.patch_pending) == (KLP_UNPATCHED, True), child
    # the unswitched child runs the old code, like its parent
    assert k.call(staged, "vmlinux", "cmdline_proc_show") == ORIGINAL
    assert machine.shell.patch_state == KLP_PATCHED and not machine.shell.patch_pending
    child = k.task_for(7777, "cat", ppid=machine.shell.pid)
    assert (child.patch_state, child.patch_pending) == (KLP_PATCHED, False)


def test_positive_init_return_keeps_module(machine):
    demo = "test_klp_callbacks_demo"
    assert machine.insmod(demo, "pre_patch_ret=1") == 0
    texts = machine.log()
    at = texts.index(f"do_init_module: '{demo}'->init suspiciously returned 1, it should follow 0/-E convention\n"
                     "do_init_module: loading module anyway...")
    assert texts[at + 1].startswith("CPU: 0 UID: 0 PID: ") and " Comm: insmod Tainted: G           OE K  " in \
        texts[at + 1]
    assert texts[at + 2] == "Tainted: [O]=OOT_MODULE, [E]=UNSIGNED_MODULE, [K]=LIVEPATCH"
    assert machine.k.modules.get(demo).refcnt == 0 and machine.patches() == []
    assert machine.rmmod(demo) == 0


def test_module_params(machine):
    assert machine.insmod(LP, "bogus=1") == 0
    assert f"{LP}: unknown parameter 'bogus' ignored" in machine.log()
    assert machine.insmod("test_klp_atomic_replace", "replace=abc") == -errno.EINVAL
    assert machine.k.modules.get("test_klp_atomic_replace") is None
    assert machine.insmod(LP) == -errno.EEXIST


HZ = 250  # Debian's CONFIG_HZ
INITIAL_JIFFIES = (-300 * HZ) & 0xFFFFFFFF


def kernel_retry_jiffy(j0: int) -> int:
    """The jiffy at which work queued at jiffy ``j0`` (CPU 0) with
    round_jiffies_relative(HZ) runs: kernel/time/timer.c's rules, written out
    here rather than taken from the model.  The expiry is a whole second of
    jiffies (rounded down when under HZ/4 past one); 63..503 jiffies out is
    wheel level 1, whose 8-jiffy buckets fire strictly after the expiry."""
    j = j0 + HZ
    rem = j % HZ
    j = j - rem if rem < HZ // 4 else j - rem + HZ
    assert 63 <= j - j0 < 504
    return ((j >> 3) + 1) << 3


def jiffy_ns(j: int) -> int:
    return (j - INITIAL_JIFFIES) * NSEC_PER_SEC // HZ


def _delay_at(now: int) -> tuple[int, int]:
    """(the model's retry delay, the jiffy) for a machine at ``now``."""
    k = Kernel()
    assert (k.HZ, k.INITIAL_JIFFIES) == (HZ, INITIAL_JIFFIES)
    k.clock.set(now)
    return klp_retry_delay_ns(k), k.jiffies()


def test_retry_delay_follows_jiffies():
    whole = next(j for j in range(INITIAL_JIFFIES, INITIAL_JIFFIES + HZ) if j % HZ == 0)  # a whole second
    for now in [0, 123_456_789, jiffy_ns(whole) + 40_000_000, jiffy_ns(whole) + 600_000_000, 7 * NSEC_PER_SEC + 1]:
        delay, j0 = _delay_at(now)
        assert now + delay == jiffy_ns(kernel_retry_jiffy(j0)), now
        assert 3 * NSEC_PER_SEC // 4 - 4_000_000 < delay <= 7 * NSEC_PER_SEC // 4 + 32_000_000
    # 40 ms past a whole second rounds down (under a second to wait), 600 ms past rounds up
    assert _delay_at(jiffy_ns(whole) + 40_000_000)[0] < NSEC_PER_SEC
    assert _delay_at(jiffy_ns(whole) + 600_000_000)[0] > NSEC_PER_SEC
    # the quarter second, to the jiffy: 61 jiffies past rounds down, 62 (HZ/4 in integers) up
    for past, down in ((50, True), (61, True), (62, False), (63, False)):
        delay, j0 = _delay_at(jiffy_ns(whole + past))
        assert (delay < NSEC_PER_SEC) == down, past
        assert j0 + delay * HZ // NSEC_PER_SEC == kernel_retry_jiffy(j0)