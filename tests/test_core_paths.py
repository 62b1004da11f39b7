"""The livepatch core's failure paths, log level and text together
(kernel/livepatch/core.c klp_module_coming(), klp_cleanup_module_patches_limited(),
callbacks that fail): paths no upstream selftest walks, found by mutation
testing to be unchecked."""

from __future__ import annotations

import errno

import pytest

from livefs.kernel.kernel import Kernel
from livefs.kernel.moddef import Callbacks, Func, Function, ModuleDef, Object, Patch
from livefs.kernel.printk import KERN_DEBUG, KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING

TARGET = "lf_late"


def _tag(version: str):
    return lambda call: version


def _target(notrace: bool = False) -> ModuleDef:
    return ModuleDef(name=TARGET, description="late target",
                     functions=[Function("late_fn", _tag("orig"), notrace=notrace),
                                Function("other_fn", _tag("orig"))])


def _callbacks(tag: str, pre_ret: int = 0) -> Callbacks:
    """Callbacks that say which ran; the pre-patch one returns ``pre_ret``."""
    def say(what: str, ret: int = 0):
        def cb(ctx, obj) -> int:
            ctx.pr_info(f"{what} {tag} {obj.mod.name if obj.mod else 'vmlinux'}")
            return ret
        return cb
    return Callbacks(pre_patch=say("pre_patch", pre_ret), post_patch=say("post_patch"),
                     pre_unpatch=say("pre_unpatch"), post_unpatch=say("post_unpatch"))


def _patch(name: str, func: str = "late_fn", pre_ret: int = 0) -> ModuleDef:
    return ModuleDef(name=name, description="late patch", livepatch=True,
                     patch=Patch(objs=[Object(TARGET, [Func(func, _tag(name))], _callbacks(name, pre_ret))]))


@pytest.fixture
def k() -> Kernel:
    return Kernel(ncpus=1)


def _load(k: Kernel, defn: ModuleDef) -> tuple[int, list[tuple[int, str]]]:
    """insmod from a task of its own: (return value, the new log records as (level, text))."""
    first = k.printk.next_seq
    with k.syscall(k.task_for(k.tasks.new_pid(), "insmod")):
        ret = k.load_module(defn)
    return ret, [(r.level, r.text) for r in k.printk.records if r.seq >= first and r.level != KERN_DEBUG
                 and "taint" not in r.text]


def test_a_module_named_vmlinux_is_refused(k):
    ret, log = _load(k, ModuleDef(name="vmlinux", description="impostor"))
    assert ret == -errno.EINVAL
    assert log == [(KERN_ERR, "livepatch: vmlinux.ko: invalid module name")]
    assert k.modules.get("vmlinux") is None


def test_late_module_missing_the_patched_function(k):
    assert _load(k, _patch("lf_p_missing", func="no_such_fn"))[0] == 0
    ret, log = _load(k, _target())
    assert ret == -errno.EINVAL
    assert log == [
        (KERN_ERR, "livepatch: symbol 'no_such_fn' not found in symbol table"),
        (KERN_WARNING, f"livepatch: failed to initialize patch 'lf_p_missing' for module '{TARGET}' (-22)"),
        (KERN_WARNING, f"livepatch: patch 'lf_p_missing' failed for module '{TARGET}', refusing to load "
                       f"module '{TARGET}'"),
    ]
    assert k.modules.get(TARGET) is None
    obj = k.livepatch.find_sysfs_patch("lf_p_missing").objs[0]
    assert obj.mod is None and not obj.patched  # klp_free_object_loaded()
    # the patch lives on, and while it does every load of the module fails the same way
    assert _load(k, _target())[0] == -errno.EINVAL


def test_late_module_whose_pre_patch_callback_fails(k):
    assert _load(k, _patch("lf_p_pre", pre_ret=-errno.ENODEV))[0] == 0
    ret, log = _load(k, _target())
    assert ret == -errno.ENODEV
    assert log == [
        (KERN_NOTICE, f"livepatch: applying patch 'lf_p_pre' to loading module '{TARGET}'"),
        (KERN_INFO, f"lf_p_pre: pre_patch lf_p_pre {TARGET}"),
        (KERN_WARNING, f"livepatch: pre-patch callback failed for object '{TARGET}'"),
        (KERN_WARNING, f"livepatch: patch 'lf_p_pre' failed for module '{TARGET}', refusing to load module "
                       f"'{TARGET}'"),
    ]
    assert k.modules.get(TARGET) is None


def test_late_module_whose_function_cannot_be_patched(k):
    """A notrace function: ftrace cannot redirect it.  The post-unpatch
    callback runs, since the pre-patch one succeeded."""
    assert _load(k, _patch("lf_p_notrace"))[0] == 0
    ret, log = _load(k, _target(notrace=True))
    assert ret == -errno.EINVAL
    assert log == [
        (KERN_NOTICE, f"livepatch: applying patch 'lf_p_notrace' to loading module '{TARGET}'"),
        (KERN_INFO, f"lf_p_notrace: pre_patch lf_p_notrace {TARGET}"),
        (KERN_ERR, "livepatch: failed to find location for function 'late_fn'"),
        (KERN_WARNING, f"livepatch: failed to apply patch 'lf_p_notrace' to module '{TARGET}' (-22)"),
        (KERN_INFO, f"lf_p_notrace: post_unpatch lf_p_notrace {TARGET}"),
        (KERN_WARNING, f"livepatch: patch 'lf_p_notrace' failed for module '{TARGET}', refusing to load "
                       f"module '{TARGET}'"),
    ]
    assert k.modules.get(TARGET) is None


def test_a_later_patch_failing_reverts_the_earlier_ones(k):
    """klp_cleanup_module_patches_limited(): the patches before the failing
    one, applied to the coming module a moment ago, are reverted in order,
    each with its unpatch callbacks; the failing one and those after it are
    left alone."""
    assert _load(k, _patch("lf_p_good"))[0] == 0
    assert _load(k, _patch("lf_p_bad", func="other_fn", pre_ret=-errno.EBUSY))[0] == 0
    ret, log = _load(k, _target())
    assert ret == -errno.EBUSY
    assert log == [
        (KERN_NOTICE, f"livepatch: applying patch 'lf_p_good' to loading module '{TARGET}'"),
        (KERN_INFO, f"lf_p_good: pre_patch lf_p_good {TARGET}"),
        (KERN_INFO, f"lf_p_good: post_patch lf_p_good {TARGET}"),
        (KERN_NOTICE, f"livepatch: applying patch 'lf_p_bad' to loading module '{TARGET}'"),
        (KERN_INFO, f"lf_p_bad: pre_patch lf_p_bad {TARGET}"),
        (KERN_WARNING, f"livepatch: pre-patch callback failed for object '{TARGET}'"),
        (KERN_WARNING, f"livepatch: patch 'lf_p_bad' failed for module '{TARGET}', refusing to load module "
                       f"'{TARGET}'"),
        (KERN_INFO, f"lf_p_good: pre_unpatch lf_p_good {TARGET}"),
        (KERN_NOTICE, f"livepatch: reverting patch 'lf_p_good' on unloading module '{TARGET}'"),
        (KERN_INFO, f"lf_p_good: post_unpatch lf_p_good {TARGET}"),
    ]
    lp = k.livepatch
    for name in ("lf_p_good", "lf_p_bad"):
        obj = lp.find_sysfs_patch(name).objs[0]
        assert obj.mod is None and not obj.patched, name
    assert not lp.ops  # nothing left registered with ftrace


def test_a_late_module_patched_and_unloaded(k):
    """The good path, whole: applied on load with both patch callbacks,
    reverted on unload with both unpatch callbacks, and the function runs
    the patch's code meanwhile."""
    assert _load(k, _patch("lf_p_ok"))[0] == 0
    ret, log = _load(k, _target())
    assert ret == 0
    assert log == [
        (KERN_NOTICE, f"livepatch: applying patch 'lf_p_ok' to loading module '{TARGET}'"),
        (KERN_INFO, f"lf_p_ok: pre_patch lf_p_ok {TARGET}"),
        (KERN_INFO, f"lf_p_ok: post_patch lf_p_ok {TARGET}"),
    ]
    shell = k.task_for(9000, "bash")
    with k.syscall(shell):
        assert k.call(shell, TARGET, "late_fn") == "lf_p_ok"
    first = k.printk.next_seq
    with k.syscall(k.task_for(k.tasks.new_pid(), "rmmod")):
        assert k.delete_module(TARGET) == 0
    assert [(r.level, r.text) for r in k.printk.records if r.seq >= first] == [
        (KERN_INFO, f"lf_p_ok: pre_unpatch lf_p_ok {TARGET}"),
        (KERN_NOTICE, f"livepatch: reverting patch 'lf_p_ok' on unloading module '{TARGET}'"),
        (KERN_INFO, f"lf_p_ok: post_unpatch lf_p_ok {TARGET}"),
    ]
    obj = k.livepatch.find_sysfs_patch("lf_p_ok").objs[0]
    assert obj.mod is None and not obj.patched and not k.livepatch.ops


def test_a_callback_that_raises_fails_like_efault(k):
    """A module's Python that raises is a module bug, not a livefs crash: the
    log names the patch and the callback, and the callback's caller sees
    -EFAULT (a pre-patch callback: the patch is refused)."""
    import functools

    def pre_patch(ctx, obj):
        raise ValueError("boom")

    def _named(pre) -> ModuleDef:
        return ModuleDef(name="lf_p_raise", description="raises", livepatch=True,
                         patch=Patch(objs=[Object(None, [Func("cmdline_proc_show", _tag("lf_p_raise"))],
                                                  Callbacks(pre_patch=pre))]))

    ret, log = _load(k, _named(pre_patch))
    assert ret == -errno.EFAULT
    assert (KERN_ERR, "livefs: lf_p_raise: pre_patch raised ValueError: boom") in log
    bug = log.index((KERN_ERR, "livefs: lf_p_raise: pre_patch raised ValueError: boom"))
    assert log[bug + 1:bug + 3] == [(KERN_WARNING, "livepatch: pre-patch callback failed for object 'vmlinux'"),
                                    (KERN_WARNING, "livepatch: failed to enable patch 'lf_p_raise'")]
    assert k.modules.last_error == "lf_p_raise: pre_patch raised ValueError: boom"
    # a callable without a name (a partial) is called "callback"
    ret, log = _load(k, _named(functools.partial(pre_patch)))
    assert ret == -errno.EFAULT
    assert (KERN_ERR, "livefs: lf_p_raise: callback raised ValueError: boom") in log


def test_kstrtobool_as_lib_kstrtox():
    """Every first byte (and every second after an 'o'): only the kernel's
    characters are accepted, everything else is EINVAL (None here)."""
    from livefs.kernel.livepatch.core import kstrtobool
    for first in range(256):
        c = bytes([first])
        want = True if c in b"yYtT1" else False if c in b"nNfF0" else None
        if c not in b"oO":
            assert kstrtobool(c + b"\n") is want, c
            continue
        assert kstrtobool(c) is None
        for second in range(256):
            d = bytes([second])
            assert kstrtobool(c + d) is (True if d in b"nN" else False if d in b"fF" else None), c + d
    assert kstrtobool(b"") is None


def test_klp_enable_patch_refusals(k):
    """klp_enable_patch() from a module not marked as a livepatch, and a patch
    whose states are older than the installed ones: pr_err and EINVAL."""
    from livefs.catalog import find
    not_lp = ModuleDef(name="lf_not_lp", description="not a livepatch",
                       init=lambda ctx: ctx.klp_enable_patch(Patch(objs=[Object(None, [
                           Func("cmdline_proc_show", _tag("lf_not_lp"))])])))
    ret, log = _load(k, not_lp)
    assert ret == -errno.EINVAL and k.modules.get("lf_not_lp") is None
    assert (KERN_ERR, "livepatch: module lf_not_lp is not marked as a livepatch module") in log
    ret, log = _load(k, find("test_klp_state2"))
    assert ret == 0
    # the transition's notices, at their levels (completes inside the write on one CPU)
    assert [(lvl, text) for lvl, text in log if text.startswith("livepatch: ")][-3:] == [
        (KERN_NOTICE, "livepatch: enabling patch 'test_klp_state2'"),
        (KERN_NOTICE, "livepatch: 'test_klp_state2': starting patching transition"),
        (KERN_NOTICE, "livepatch: 'test_klp_state2': patching complete")]
    ret, log = _load(k, find("test_klp_state"))
    assert ret == -errno.EINVAL and k.modules.get("test_klp_state") is None
    assert log == [(KERN_ERR, "livepatch: Livepatch patch (test_klp_state) is not compatible with the already "
                              "installed livepatches.")]
