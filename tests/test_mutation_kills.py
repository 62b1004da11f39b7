"""Behaviour the mutation run over kernel/livepatch/{core,transition}.py
found unchecked (tests/mutation-survivors.md lists what is left and why).

Each test asserts what a user of the kernel (or of livefs's own views) sees:
an errno, a log line and its level, a sysfs value, which code a task runs,
a task's patch_state, a module's refcount, the dynamic debug control file,
the transition record ``livefs timeline`` draws.  Virtual time only.
"""

from __future__ import annotations

import errno
import json

import pytest

from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.livepatch.status import transitions_json
from livefs.kernel.moddef import Callbacks, Func, Function, ModuleDef, Object, Patch, State
from livefs.kernel.printk import KERN_DEBUG, KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING
from livefs.kernel.tasks import KLP_PATCHED, KLP_UNPATCHED, TaskKind
from livefs.kernel.version import KernelVersion

TARGET = "lf_mk_target"
CMDLINE, MEMINFO = "cmdline_proc_show", "meminfo_proc_show"


def _tag(version: str):
    return lambda call: version


@pytest.fixture
def k() -> Kernel:
    return Kernel(ncpus=1)


def _log_since(k: Kernel, first: int) -> list[tuple[int, str]]:
    return [(r.level, r.text) for r in k.printk.records if r.seq >= first and r.level != KERN_DEBUG
            and "taint" not in r.text]


def _load(k: Kernel, defn: ModuleDef) -> tuple[int, list[tuple[int, str]]]:
    """insmod from a task of its own: (return value, the new log records as (level, text))."""
    first = k.printk.next_seq
    with k.syscall(k.task_for(k.tasks.new_pid(), "insmod")):
        ret = k.load_module(defn)
    return ret, _log_since(k, first)


def _rmmod(k: Kernel, name: str) -> tuple[int, list[tuple[int, str]]]:
    first = k.printk.next_seq
    with k.syscall(k.task_for(k.tasks.new_pid(), "rmmod")):
        ret = k.delete_module(name)
    return ret, _log_since(k, first)


def _lp(name: str, objs: list[Object], replace: bool = False, states: list[State] | None = None) -> ModuleDef:
    return ModuleDef(name=name, description="livepatch", livepatch=True,
                     patch=Patch(objs=objs, replace=replace, states=states or []))


def _vmlinux(name: str, *funcs: str, callbacks: Callbacks | None = None) -> Object:
    return Object(None, [Func(f, _tag(name)) for f in funcs], callbacks or Callbacks())


def _write(k: Kernel, patch: str, attr: str, data: bytes) -> int:
    p = k.livepatch.find_sysfs_patch(patch)
    assert p is not None, patch
    shell = k.task_for(5000, "bash")
    with k.syscall(shell):
        return {"enabled": k.livepatch.enabled_store, "force": k.livepatch.force_store}[attr](p, data)


def _cat(k: Kernel, func: str, obj: str = "vmlinux", task=None):
    t = task or k.task_for(5000, "bash")
    with k.syscall(t):
        return k.call(t, obj, func)


def _fn(k: Kernel, name: str, obj: str = "vmlinux"):
    return k.symbols.find(obj, name)[0]


def _blocker(k: Kernel, func: str, obj: str = "vmlinux", comm: str = "blocker"):
    """A kthread asleep inside ``obj:func``: a stack check cannot switch it."""
    return k.sched.spawn(TaskKind.KTHREAD, comm, _fn(k, func, obj))


def _records(k: Kernel) -> list[dict]:
    return json.loads(transitions_json(k))["records"]


# -- sysfs writes -------------------------------------------------------------------------------


def test_kstrtobool_only_o_takes_a_second_character():
    """"Xn" or "Xf" is not a boolean: only 'o'/'O' look at the next byte."""
    from livefs.kernel.livepatch.core import kstrtobool
    for first in range(256):
        if bytes([first]) in b"oO":
            continue
        for second in b"nNfF":
            want = True if bytes([first]) in b"yYtT1" else False if bytes([first]) in b"nNfF0" else None
            assert kstrtobool(bytes([first, second])) is want, bytes([first, second])


def test_a_second_disable_during_the_unpatching_transition_is_einval(k):
    """enabled_store(): patch->enabled is already false while it unpatches."""
    assert _load(k, _lp("lf_mk_dis", [_vmlinux("lf_mk_dis", CMDLINE)]))[0] == 0
    blocker = k.sched.spawn(TaskKind.KTHREAD, "blocker", next(iter(k.symbols.functions("lf_mk_dis"))))
    assert _write(k, "lf_mk_dis", "enabled", b"0") == 0
    assert k.livepatch.transition_patch is not None  # held by the blocker
    assert k.livepatch.find_sysfs_patch("lf_mk_dis").enabled is False  # cat enabled: 0
    assert _write(k, "lf_mk_dis", "enabled", b"0") == -errno.EINVAL
    assert _records(k)[-1]["target"] == "unpatched"  # no reversal happened
    k.sched.wake(blocker)
    k.settle()
    assert k.livepatch.find_sysfs_patch("lf_mk_dis") is None


# -- klp_enable_patch()'s checks ----------------------------------------------------------------


def _init_enabling(patch: Patch):
    """A livepatch module whose init calls klp_enable_patch() itself (no validation first)."""
    def init(ctx) -> int:
        return ctx.klp_enable_patch(patch)
    return init


@pytest.mark.parametrize("func", [Func("", _tag("x")), Func(CMDLINE, None)], ids=["no-old-name", "no-new-func"])
def test_a_func_without_old_name_or_new_func_is_einval_before_anything_else(k, func):
    """klp_init_func()'s checks: -EINVAL, and not a word in the log (no symbol lookup, no enabling)."""
    defn = ModuleDef(name="lf_mk_bad", description="bad func", livepatch=True,
                     init=_init_enabling(Patch(objs=[Object(None, [func])])))
    ret, log = _load(k, defn)
    assert ret == -errno.EINVAL
    assert log == []
    assert k.modules.get("lf_mk_bad") is None and not k.livepatch.sysfs_patches


def test_klp_enable_patch_outside_init_from_a_going_module_is_enodev(k):
    """try_module_get() of a module whose exit runs fails: -ENODEV (the module prints what it got)."""
    def exit_(ctx) -> None:
        ctx.pr_info(f"klp_enable_patch: {ctx.klp_enable_patch(Patch(objs=[_vmlinux('lf_mk_late', CMDLINE)]))}")
    defn = ModuleDef(name="lf_mk_late", description="enables on exit", livepatch=True,
                     init=lambda ctx: 0, exit=exit_)
    assert _load(k, defn)[0] == 0
    ret, log = _rmmod(k, "lf_mk_late")
    assert ret == 0
    assert (KERN_INFO, f"lf_mk_late: klp_enable_patch: {-errno.ENODEV}") in log


def test_states_a_non_replace_patch_must_not_downgrade_any(k):
    """klp_is_patch_compatible(): every installed state is checked, not only up to the first the new
    patch lacks; a cumulative (replace) patch must carry every installed state."""
    msg = "livepatch: Livepatch patch ({}) is not compatible with the already installed livepatches."
    assert _load(k, _lp("lf_mk_st1", [_vmlinux("lf_mk_st1", CMDLINE)],
                        states=[State(1, 1), State(2, 2)]))[0] == 0
    ret, log = _load(k, _lp("lf_mk_st2", [_vmlinux("lf_mk_st2", MEMINFO)], states=[State(2, 1)]))
    assert (ret, log) == (-errno.EINVAL, [(KERN_ERR, msg.format("lf_mk_st2"))])
    ret, log = _load(k, _lp("lf_mk_st3", [_vmlinux("lf_mk_st3", MEMINFO)], replace=True, states=[State(2, 2)]))
    assert (ret, log) == (-errno.EINVAL, [(KERN_ERR, msg.format("lf_mk_st3"))])
    # the same states, or newer: compatible
    assert _load(k, _lp("lf_mk_st4", [_vmlinux("lf_mk_st4", MEMINFO)], replace=True,
                        states=[State(1, 1), State(2, 3)]))[0] == 0


def _target(notrace: bool = False) -> ModuleDef:
    return ModuleDef(name=TARGET, description="target", functions=[Function("mk_fn", _tag("orig"), notrace=notrace)],
                     exit=lambda ctx: None)


def test_an_object_that_cannot_be_patched_at_enable_is_a_warning(k):
    """klp_enable_patch() on a loaded module whose function is notrace: the three lines at their levels."""
    assert _load(k, _target(notrace=True))[0] == 0
    ret, log = _load(k, _lp("lf_mk_nt", [Object(TARGET, [Func("mk_fn", _tag("new"))])]))
    assert ret == -errno.EINVAL
    assert [(lvl, t) for lvl, t in log if t.startswith("livepatch: ") and "enabling" not in t] == [
        (KERN_ERR, "livepatch: failed to find location for function 'mk_fn'"),
        (KERN_WARNING, f"livepatch: failed to patch object '{TARGET}'"),
        (KERN_WARNING, "livepatch: failed to enable patch 'lf_mk_nt'"),
        (KERN_NOTICE, "livepatch: 'lf_mk_nt': unpatching complete"),
    ]


def test_a_failed_enable_leaves_no_trace_in_stack_order(k):
    """A patch whose pre-patch callback fails is off klp_patches: the next one is first."""
    bad = Callbacks(pre_patch=lambda ctx, obj: -errno.ENODEV)
    assert _load(k, _lp("lf_mk_fail", [_vmlinux("lf_mk_fail", CMDLINE, callbacks=bad)]))[0] == -errno.ENODEV
    assert _load(k, _lp("lf_mk_ok", [_vmlinux("lf_mk_ok", MEMINFO)]))[0] == 0
    p = k.livepatch.find_sysfs_patch("lf_mk_ok")
    assert k.livepatch.stack_order(p) == 1  # cat stack_order
    assert [p.name for p in k.livepatch.sysfs_patches] == ["lf_mk_ok"]


def test_a_failed_patching_transition_unpatches_the_objects_it_had_patched(k):
    """klp_cancel_transition(): the vmlinux object was patched before the module object's pre-patch
    callback failed; cancelling unpatches it, with its post-unpatch callback."""
    assert _load(k, _target())[0] == 0
    orig = _cat(k, CMDLINE)

    def cb(what, ret=0):
        def f(ctx, obj):
            ctx.pr_info(f"{what} {obj.mod.name if obj.mod else 'vmlinux'}")
            return ret
        return f

    vm = Object(None, [Func(CMDLINE, _tag("new"))], Callbacks(pre_patch=cb("pre_patch"), post_unpatch=cb("post_unpatch")))
    mod = Object(TARGET, [Func("mk_fn", _tag("new"))], Callbacks(pre_patch=cb("pre_patch", -errno.ENODEV)))
    ret, log = _load(k, _lp("lf_mk_cancel", [vm, mod]))
    assert ret == -errno.ENODEV
    assert [t for _, t in log if not t.startswith("livepatch: enabling")] == [
        "lf_mk_cancel: pre_patch vmlinux", f"lf_mk_cancel: pre_patch {TARGET}",
        f"livepatch: pre-patch callback failed for object '{TARGET}'",
        "livepatch: failed to enable patch 'lf_mk_cancel'",
        "lf_mk_cancel: post_unpatch vmlinux", "livepatch: 'lf_mk_cancel': unpatching complete"]
    assert _cat(k, CMDLINE) == orig
    assert not k.livepatch.ops


# -- atomic replace -------------------------------------------------------------------------------


def test_replace_adds_a_nop_for_every_function_it_does_not_patch(k):
    """The old patch changes two functions, the replacement one: the other gets a nop, so a task
    that has switched runs the original of it while the transition is still held."""
    orig = _cat(k, MEMINFO)
    assert _load(k, _lp("lf_mk_old", [_vmlinux("lf_mk_old", CMDLINE, MEMINFO)]))[0] == 0
    assert _cat(k, MEMINFO) == "lf_mk_old"
    old_code = next(f for f in k.symbols.functions("lf_mk_old") if CMDLINE in f.name)
    blocker = k.sched.spawn(TaskKind.KTHREAD, "blocker", old_code)
    assert _load(k, _lp("lf_mk_new", [_vmlinux("lf_mk_new", CMDLINE)], replace=True))[0] == 0
    assert k.livepatch.transition_patch.name == "lf_mk_new"
    obj = k.livepatch.find_sysfs_patch("lf_mk_new").objs[0]
    assert [f.sysfs_name for f in obj.funcs] == [f"{CMDLINE},1", f"{MEMINFO},1"]  # ls .../lf_mk_new/vmlinux
    assert _cat(k, MEMINFO) == orig  # the shell has switched: the nop
    assert _cat(k, CMDLINE) == "lf_mk_new"
    k.sched.wake(blocker)
    k.settle()
    assert _cat(k, MEMINFO) == orig and _cat(k, CMDLINE) == "lf_mk_new"


def test_a_failed_replace_leaves_the_original_functions_alone(k):
    """Freeing a replace patch that never completed (its nops still there) must not drop the
    functions the nops stand for."""
    orig = _cat(k, CMDLINE)
    assert _load(k, _lp("lf_mk_base", [_vmlinux("lf_mk_base", CMDLINE)]))[0] == 0
    bad = Callbacks(pre_patch=lambda ctx, obj: -errno.EBUSY)
    ret, _ = _load(k, _lp("lf_mk_repl", [_vmlinux("lf_mk_repl", MEMINFO, callbacks=bad)], replace=True))
    assert ret == -errno.EBUSY
    assert _cat(k, CMDLINE) == "lf_mk_base"
    assert k.symbols.find("vmlinux", CMDLINE)  # /proc/kallsyms still has it
    assert _write(k, "lf_mk_base", "enabled", b"0") == 0
    k.settle()
    assert _cat(k, CMDLINE) == orig


@pytest.mark.parametrize("version, ok", [("5.10", True), ("5.15", True), ("6.6", True), ("6.18", True),
                                         ("6.10", False), ("5.11", False), ("6.7", False)])
def test_sympos_0_and_1_match_in_every_stable_tree_with_the_fix(version, ok):
    """"livepatch: Match old_sympos 0 and 1 in klp_find_func()" went to 5.10, 5.15, 6.1, 6.6, 6.12
    and 6.18 (and 6.19+); other trees give the replace patch a duplicate nop directory."""
    k = Kernel(version=KernelVersion.parse(version), ncpus=1)
    assert _load(k, _lp("lf_one", [Object(None, [Func(CMDLINE, _tag("one"), old_sympos=1)])]))[0] == 0
    k.settle()
    ret, log = _load(k, _lp("lf_two", [Object(None, [Func(CMDLINE, _tag("two"))])], replace=True))
    assert ret == (0 if ok else -errno.EEXIST)


def test_replace_of_the_same_function_before_the_fix_needs_no_nop():
    """Before the sympos fix klp_find_func() still matches the same name at the same position."""
    k = Kernel(version=KernelVersion.parse("6.5"), ncpus=1)
    assert _load(k, _lp("lf_one", [_vmlinux("lf_one", CMDLINE, MEMINFO)]))[0] == 0
    k.settle()
    ret, log = _load(k, _lp("lf_two", [_vmlinux("lf_two", MEMINFO)], replace=True))
    assert ret == 0 and not any("duplicate" in t for _, t in log)
    assert [f.sysfs_name for f in k.livepatch.find_sysfs_patch("lf_two").objs[0].funcs] == [f"{MEMINFO},1"]
    k.settle()
    assert _cat(k, MEMINFO) == "lf_two"


def test_forcing_a_replace_keeps_the_replaced_modules_pinned(k):
    """klp_force_transition(): the patches being replaced are marked forced, so their modules keep
    their reference for good; the replacement's own does not."""
    assert _load(k, _lp("lf_mk_a", [_vmlinux("lf_mk_a", CMDLINE)]))[0] == 0
    old_code = next(iter(k.symbols.functions("lf_mk_a")))
    k.sched.spawn(TaskKind.KTHREAD, "blocker", old_code)
    assert _load(k, _lp("lf_mk_b", [_vmlinux("lf_mk_b", CMDLINE)], replace=True))[0] == 0
    first = k.printk.next_seq
    assert _write(k, "lf_mk_b", "force", b"1") == 0
    assert (KERN_WARNING, "livepatch: forcing remaining tasks to the patched state") in _log_since(k, first)
    k.settle()
    assert k.livepatch.find_sysfs_patch("lf_mk_a") is None
    assert k.modules.get("lf_mk_a").refcnt == 1  # /sys/module/lf_mk_a/refcnt
    assert _rmmod(k, "lf_mk_a")[0] == -errno.EWOULDBLOCK
    assert k.modules.get("lf_mk_b").refcnt == 1  # still enabled
    assert _write(k, "lf_mk_b", "enabled", b"0") == 0
    k.settle()
    assert k.modules.get("lf_mk_b").refcnt == 0 and _rmmod(k, "lf_mk_b")[0] == 0


# -- late module loading --------------------------------------------------------------------------


def test_a_coming_module_is_patched_by_every_patch_for_it(k):
    """klp_module_coming() and klp_module_going() look at every patch, past those without an
    object for the module."""
    assert _load(k, _lp("lf_mk_vm", [_vmlinux("lf_mk_vm", CMDLINE)]))[0] == 0
    assert _load(k, _lp("lf_mk_mod", [Object(TARGET, [Func("mk_fn", _tag("lf_mk_mod"))])]))[0] == 0
    ret, log = _load(k, _target())
    assert ret == 0
    assert (KERN_NOTICE, f"livepatch: applying patch 'lf_mk_mod' to loading module '{TARGET}'") in log
    assert _cat(k, "mk_fn", TARGET) == "lf_mk_mod"
    ret, log = _rmmod(k, TARGET)
    assert ret == 0
    assert log == [(KERN_NOTICE, f"livepatch: reverting patch 'lf_mk_mod' on unloading module '{TARGET}'")]


# -- the transition's code pairs, signals, staging --------------------------------------------------


def test_an_unloaded_object_does_not_hide_the_next_objects_functions(k):
    """A task asleep in the original of a function the patch changes holds the transition, even when
    an object before it in the patch is a module that is not loaded."""
    blocker = _blocker(k, CMDLINE)
    ret, _ = _load(k, _lp("lf_mk_two", [Object(TARGET, [Func("mk_fn", _tag("x"))]), _vmlinux("lf_mk_two", CMDLINE)]))
    assert ret == 0
    assert k.livepatch.transition_patch is not None
    assert blocker.patch_state == KLP_UNPATCHED and blocker.patch_pending
    k.sched.wake(blocker)
    k.settle()
    assert k.livepatch.transition_patch is None


def test_signals_every_15_attempts_notice_level_and_recorded(k):
    """"signaling remaining tasks" is a pr_notice; the record names the tasks signalled."""
    blocker, second = _blocker(k, CMDLINE), _blocker(k, CMDLINE, comm="second")
    assert _load(k, _lp("lf_mk_sig", [_vmlinux("lf_mk_sig", CMDLINE)]))[0] == 0
    first = k.printk.next_seq
    k.advance(17 * NSEC_PER_SEC)
    assert (KERN_NOTICE, "livepatch: signaling remaining tasks") in _log_since(k, first)
    signals = [e for e in _records(k)[-1]["events"] if e["kind"] == "signal"]
    assert signals and signals[0]["detail"] == f"{blocker.pid},{second.pid}"
    k.sched.wake(blocker)
    k.sched.wake(second)
    k.settle()


def test_staging_keeps_tasks_consistent_with_the_code_they_are_put_in(k):
    """A task put into code the transition takes away is pending in the initial state; one put into
    the code it brings has switched -- both when patching and when unpatching."""
    blocker = _blocker(k, CMDLINE)
    moved = k.sched.spawn(TaskKind.KTHREAD, "moved", _fn(k, CMDLINE))  # held too, until moved
    assert _load(k, _lp("lf_mk_stage", [_vmlinux("lf_mk_stage", CMDLINE)]))[0] == 0
    new_code = next(iter(k.symbols.functions("lf_mk_stage")))
    old = k.sched.spawn(TaskKind.KTHREAD, "in_old", _fn(k, CMDLINE))
    assert (old.patch_state, old.patch_pending) == (KLP_UNPATCHED, True)
    assert (moved.patch_state, moved.patch_pending) == (KLP_UNPATCHED, True)
    k.sched.sleep(moved, new_code)
    assert (moved.patch_state, moved.patch_pending) == (KLP_PATCHED, False)
    assert [s["cause"] for s in _records(k)[-1]["switches"] if s["id"] == moved.pid] == ["staged"]
    for t in (blocker, old, moved):
        k.sched.wake(t)
    k.settle()
    # unpatching: the patch's code is taken away, the original comes back
    held = k.sched.spawn(TaskKind.KTHREAD, "held", new_code)
    assert _write(k, "lf_mk_stage", "enabled", b"0") == 0
    assert k.livepatch.transition_patch is not None
    inner = k.sched.spawn(TaskKind.KTHREAD, "in_new", new_code)
    assert (inner.patch_state, inner.patch_pending) == (KLP_PATCHED, True)
    back = held  # held in the patch's code, then moved into the original
    k.sched.sleep(back, _fn(k, CMDLINE))
    assert (back.patch_state, back.patch_pending) == (KLP_UNPATCHED, False)
    for t in (held, inner):
        k.sched.wake(t)
    k.settle()
    assert k.livepatch.find_sysfs_patch("lf_mk_stage") is None


def test_a_task_forked_by_a_pre_patch_callback_switches_by_the_stack_check(k):
    """copy_process() in a pre-patch callback: the child takes its parent's state (not yet pending);
    klp_start_transition() then marks it pending and the first attempt switches it -- no switch
    at fork."""
    child = {}

    def pre_patch(ctx, obj):
        t = ctx.kernel.sched.fork(ctx.kernel.current, "lf_child")
        child["t"], child["at_fork"] = t, (t.patch_state, t.patch_pending)
        return 0

    ret, _ = _load(k, _lp("lf_mk_fork", [_vmlinux("lf_mk_fork", CMDLINE, callbacks=Callbacks(pre_patch=pre_patch))]))
    assert ret == 0
    assert child["at_fork"] == (KLP_UNPATCHED, False)  # /proc/<pid>/patch_state: 0
    rec = _records(k)[-1]
    causes = [s["cause"] for s in rec["switches"] if s["id"] == child["t"].pid]
    assert causes == ["stack check"]


def test_the_record_says_unpatched_and_which_way_a_reversal_went(k):
    """``livefs timeline``'s target: a disable is "unpatched"; a reversal names the new direction."""
    blocker = _blocker(k, CMDLINE)
    assert _load(k, _lp("lf_mk_rev", [_vmlinux("lf_mk_rev", CMDLINE)]))[0] == 0
    assert _write(k, "lf_mk_rev", "enabled", b"0") == 0  # reverse the patching
    assert _records(k)[-1]["target"] == "patched, reversed to unpatched"
    k.sched.wake(blocker)
    k.settle()
    assert k.livepatch.find_sysfs_patch("lf_mk_rev") is None
    assert _load(k, _lp("lf_mk_rev2", [_vmlinux("lf_mk_rev2", CMDLINE)]))[0] == 0
    k.settle()
    held = k.sched.spawn(TaskKind.KTHREAD, "held", next(iter(k.symbols.functions("lf_mk_rev2"))))
    assert _write(k, "lf_mk_rev2", "enabled", b"0") == 0
    assert _records(k)[-1]["target"] == "unpatched"
    assert _write(k, "lf_mk_rev2", "enabled", b"1") == 0
    assert _records(k)[-1]["target"] == "unpatched, reversed to patched"
    k.sched.wake(held)
    k.settle()


# -- the log: dynamic debug sites, duplicate kobjects ----------------------------------------------------


def test_the_transition_debug_sites_in_dynamic_debug_control(k):
    """/proc/dynamic_debug/control lists transition.c's pr_debug sites under module livepatch;
    ``module livepatch +p`` turns them on."""
    want = [
        "kernel/livepatch/transition.c:85 [livepatch]klp_complete_transition ={} \"'%s': completing %s transition\\n\"",
        "kernel/livepatch/transition.c:161 [livepatch]klp_cancel_transition ={} \"'%s': canceling patching "
        "transition, going to unpatch\\n\"",
        "kernel/livepatch/transition.c:318 [livepatch]klp_try_switch_task ={} \"%s: %s:%d is running\\n\"",
        "kernel/livepatch/transition.c:321 [livepatch]klp_try_switch_task ={} \"%s: %s:%d has an unreliable "
        "stack\\n\"",
        "kernel/livepatch/transition.c:324 [livepatch]klp_try_switch_task ={} \"%s: %s:%d is sleeping on "
        "function %s\\n\"",
        "kernel/livepatch/transition.c:328 [livepatch]klp_try_switch_task ={} \"%s: Unknown error code (%d) "
        "when trying to switch %s:%d\\n\"",
        "kernel/livepatch/transition.c:508 [livepatch]klp_init_transition ={} \"'%s': initializing %s "
        "transition\\n\"",
        "kernel/livepatch/transition.c:637 [livepatch]klp_reverse_transition ={} \"'%s': reversing transition "
        "from %s\\n\"",
    ]

    def lines() -> list[str]:
        return [ln for ln in k.dyndbg.control_text(k.version).splitlines() if "kernel/livepatch/transition.c" in ln]

    assert lines() == [w.format("_") for w in want]
    assert k.dyndbg.exec_queries("module livepatch +p") == 0
    assert lines() == [w.format("p") for w in want]


DUP = Patch(objs=[Object(None, [Func(CMDLINE, _tag("a")), Func(CMDLINE, _tag("b"), old_sympos=1)])])


def _dump(log: list[tuple[int, str]]) -> list[str]:
    """The lines from the sysfs warning to the kobject error, CPU line included."""
    texts = [t for _, t in log]
    start = next(i for i, t in enumerate(texts) if t.startswith("sysfs: cannot create duplicate filename"))
    end = next(i for i, t in enumerate(texts) if "kobject_add_internal failed" in t)
    return texts[start:end + 1]


def test_a_duplicate_from_module_init_dumps_the_whole_stack_and_user_regs(k):
    ret, log = _load(k, ModuleDef(name="lf_mk_dup", description="dup", livepatch=True, init=_init_enabling(DUP)))
    assert ret == -errno.EEXIST
    dump = _dump(log)
    assert dump[0] == f"sysfs: cannot create duplicate filename '/kernel/livepatch/lf_mk_dup/vmlinux/{CMDLINE},1'"
    assert dump[1].startswith("CPU: 0 UID: 0 PID: ")
    trace = dump[dump.index("Call Trace:") + 1:-1]
    assert trace == [" <TASK>", " dump_stack_lvl+0x64/0x80", *(f" {f}" for f in [
        "sysfs_warn_dup+0x0/0x40", "sysfs_create_dir_ns+0x0/0x40", "kobject_add_internal+0x0/0x40",
        "kobject_add+0x0/0x40", "klp_enable_patch+0x0/0x40", "init_module+0x0/0x40 [lf_mk_dup]",
        "do_one_initcall+0x0/0x40", "do_init_module+0x0/0x40", "init_module_from_file+0x89/0xe0",
        "idempotent_init_module+0x11d/0x310", "__x64_sys_finit_module+0x5e/0xb0",
        "do_syscall_64+0x87/0x1b0", "entry_SYSCALL_64_after_hwframe+0x76/0x7e"]),
        "RIP: 0033:0x7f5a65e88829", *trace[trace.index("RIP: 0033:0x7f5a65e88829") + 1:-1], " </TASK>"]
    assert len(trace) == 2 + 13 + 8 + 1  # the frames, show_regs()'s eight lines, the end
    assert dump[-1] == (f"kobject: kobject_add_internal failed for {CMDLINE},1 with -EEXIST, don't try to "
                        "register things with the same name in the same directory.")


def test_a_duplicate_from_module_code_after_init_has_no_init_frames(k):
    """klp_enable_patch() called by a live module's own function (not its init): no init_module
    frames and no user registers below klp_enable_patch."""
    def later(call):
        return call.module.klp_enable_patch(DUP)
    defn = ModuleDef(name="lf_mk_later", description="enables later", livepatch=True, init=lambda ctx: 0,
                     exit=lambda ctx: None, functions=[Function("lf_mk_enable", later)])
    assert _load(k, defn)[0] == 0
    first = k.printk.next_seq
    assert _cat(k, "lf_mk_enable", "lf_mk_later") == -errno.EEXIST
    dump = _dump(_log_since(k, first))
    frames = [t.strip() for t in dump if "+0x" in t and not t.strip().startswith("dump_stack")]
    assert frames[-1] == "klp_enable_patch+0x0/0x40"
    assert not any(t.strip().startswith("RIP:") for t in dump)


def test_the_kobject_prefix_arrives_in_6_4():
    k = Kernel(version=KernelVersion.parse("6.4"), ncpus=1)
    ret, log = _load(k, ModuleDef(name="lf_mk_dup", description="dup", livepatch=True, init=_init_enabling(DUP)))
    assert ret == -errno.EEXIST
    assert _dump(log)[-1].startswith("kobject: kobject_add_internal failed for")


def test_kgraft_switches_user_kthread_and_idle_tasks_in_the_attempt_that_completes(k):
    """kGraft model: after a reversal every task but the blocker is pending again; one retry of the
    transition work switches them all (a task in user space, kthreads at the top of their loops, the
    idle task) and completes.  ``livefs status`` meanwhile says the task in user space is blocked by
    nothing."""
    from livefs.kernel.livepatch.consistency import ConsistencyModel
    from livefs.kernel.livepatch.status import status_data

    k.livepatch.model = ConsistencyModel.KGRAFT
    systemd = next(t for t in k.tasks.for_each_process_thread() if t.comm == "systemd")
    k.sched.wake(systemd)  # back in user space
    blocker = _blocker(k, CMDLINE)
    assert _load(k, _lp("lf_mk_kg", [_vmlinux("lf_mk_kg", CMDLINE)]))[0] == 0
    assert k.livepatch.transition_patch is not None
    assert _write(k, "lf_mk_kg", "enabled", b"0") == 0  # reverse: everyone but the blocker is pending
    pending = {t["comm"]: t["blocked_by"] for t in status_data(k)["transition"]["pending"]}
    assert pending["systemd"] is None and "blocker" not in pending
    assert k.run_until(k.wq.next_deadline()) >= 1  # the next retry of the transition work
    assert k.livepatch.find_sysfs_patch("lf_mk_kg") is None  # unpatched in that one attempt, and freed
    k.sched.wake(blocker)


def test_kpatch_looks_at_every_stack_past_tasks_already_at_the_target(k):
    """kpatch model: a task born switched mid-transition does not end the scan; one staged after it
    into the old code still holds the all-at-once switch."""
    from livefs.kernel.livepatch.consistency import ConsistencyModel

    k.livepatch.model = ConsistencyModel.KPATCH
    first_blocker = _blocker(k, CMDLINE)
    assert _load(k, _lp("lf_mk_kp", [_vmlinux("lf_mk_kp", CMDLINE)]))[0] == 0
    assert k.livepatch.transition_patch is not None
    born = k.sched.spawn(TaskKind.KTHREAD, "born", None)
    assert born.patch_state == KLP_PATCHED  # born switched
    late = _blocker(k, CMDLINE, comm="late")
    k.sched.wake(first_blocker)
    k.run_until(k.wq.next_deadline())
    assert k.livepatch.transition_patch is not None and late.patch_state == KLP_UNPATCHED
    k.sched.wake(late)
    k.settle()
    assert k.livepatch.transition_patch is None
