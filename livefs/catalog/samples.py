"""samples/livepatch modules: livepatch-sample, the callbacks demo trio, and
the shadow variable demo (a leaky module and its two fixes)."""

from __future__ import annotations

from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.livepatch.shadow import hashed_pointer

from .api import CallContext, Func, Function, ModuleContext, ModuleDef, Object, Param, Patch
from .selftests import demo_callbacks, patched_work_func, say


def _livepatch_cmdline_proc_show(call: CallContext) -> str:
    return "this has been live patched\n"


livepatch_sample = ModuleDef(
    name="livepatch_sample",
    description="Livepatch sample module",
    livepatch=True,
    patch=Patch(objs=[Object(None, [Func("cmdline_proc_show", _livepatch_cmdline_proc_show)])]),
)


# -- callbacks demo ----------------------------------------------------------------------
_cbs = demo_callbacks("pre_patch_ret")

livepatch_callbacks_demo = ModuleDef(
    name="livepatch_callbacks_demo",
    livepatch=True,
    params=[Param("pre_patch_ret", "int", 0, 0o644, "pre_patch_ret (default=0)")],
    patch=Patch(objs=[
        Object(None, [], _cbs),
        Object("livepatch_callbacks_mod", [], _cbs),
        Object("livepatch_callbacks_busymod",
               [Func("busymod_work_func", patched_work_func, new_name="patched_work_func")], _cbs),
    ]),
)

livepatch_callbacks_mod = ModuleDef(
    name="livepatch_callbacks_mod",
    init=say("livepatch_callbacks_mod_init"),
    exit=say("livepatch_callbacks_mod_exit"),
)


def _busymod_work_func(call: CallContext) -> None:
    ctx = call.module
    secs = ctx.param("sleep_secs")
    ctx.pr_info(f"busymod_work_func, sleeping {secs} seconds ...")
    wake = call.kernel.clock.now_ns + max(0, secs) * NSEC_PER_SEC
    call.kernel.sched.block_in_call(call.task, period_ns=NSEC_PER_SEC // 10,
                                    until=lambda: call.kernel.clock.now_ns >= wake,
                                    then=lambda: ctx.pr_info("busymod_work_func exit"))


def _busymod_init(ctx: ModuleContext) -> int:
    ctx.pr_info("livepatch_callbacks_mod_init")  # sic: the sample's init has this name
    ctx.schedule_delayed_work(0, "busymod_work_func")
    return 0


def _busymod_exit(ctx: ModuleContext) -> None:
    ctx.cancel_works()
    ctx.pr_info("livepatch_callbacks_mod_exit")


livepatch_callbacks_busymod = ModuleDef(
    name="livepatch_callbacks_busymod",
    params=[Param("sleep_secs", "int", 0, 0o644, "sleep_secs (default=0)")],
    functions=[Function("busymod_work_func", _busymod_work_func)],
    init=_busymod_init,
    exit=_busymod_exit,
)


# -- shadow variables demo -------------------------------------------------------------------
ALLOC_PERIOD = 1
CLEANUP_PERIOD = 3 * ALLOC_PERIOD
EXPIRE_PERIOD = 4 * CLEANUP_PERIOD
SV_LEAK, SV_COUNTER = 1, 2


class Dummy:
    """struct dummy: an expiry in jiffies."""

    def __init__(self, expire: int) -> None:
        self.jiffies_expire = expire


def _pr(call: CallContext, text: str) -> None:
    """printk without a prefix: the shadow demo module has no pr_fmt."""
    call.kernel.printk_task(6, text)


def _dummy_alloc(call: CallContext) -> Dummy:
    d = Dummy(call.kernel.jiffies() + 1000 * EXPIRE_PERIOD * call.kernel.HZ // 1000)
    call.module.data.setdefault("leaks", []).append(object())  # oops, forgot to save leak
    _pr(call, f"dummy_alloc: dummy @ {hashed_pointer(d)}, expires @ {d.jiffies_expire:x}")
    return d


def _dummy_free(call: CallContext, d: Dummy) -> None:
    _pr(call, f"dummy_free: dummy @ {hashed_pointer(d)}, expired = {d.jiffies_expire:x}")


def _dummy_check(call: CallContext, d: Dummy, jiffies: int) -> bool:
    return jiffies > d.jiffies_expire


def _alloc_work_func(call: CallContext) -> None:
    ctx = call.module
    d = call.kernel.call(call.task, ctx.name, "dummy_alloc")
    if d is not None:
        ctx.data.setdefault("dummies", []).insert(0, d)
    ctx.schedule_delayed_work(ALLOC_PERIOD * NSEC_PER_SEC, "alloc_work_func")


def _cleanup_work_func(call: CallContext) -> None:
    ctx = call.module
    j = call.kernel.jiffies()
    _pr(call, f"cleanup_work_func: jiffies = {j:x}")
    for d in list(ctx.data.get("dummies", [])):
        if call.kernel.call(call.task, ctx.name, "dummy_check", d, j):
            ctx.data["dummies"].remove(d)
            call.kernel.call(call.task, ctx.name, "dummy_free", d)
    ctx.schedule_delayed_work(CLEANUP_PERIOD * NSEC_PER_SEC, "cleanup_work_func")


def _shadow_mod_init(ctx: ModuleContext) -> int:
    ctx.schedule_delayed_work(ALLOC_PERIOD * NSEC_PER_SEC, "alloc_work_func")
    ctx.schedule_delayed_work(CLEANUP_PERIOD * NSEC_PER_SEC, "cleanup_work_func")
    return 0


def _shadow_mod_exit(ctx: ModuleContext) -> None:
    ctx.cancel_works()
    task = ctx.kernel.current
    for d in ctx.data.pop("dummies", []):
        ctx.kernel.call(task, ctx.name, "dummy_free", d)


livepatch_shadow_mod = ModuleDef(
    name="livepatch_shadow_mod",
    description="Buggy module for shadow variable demo",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    functions=[Function("dummy_alloc", _dummy_alloc), Function("dummy_free", _dummy_free),
               Function("dummy_check", _dummy_check), Function("alloc_work_func", _alloc_work_func),
               Function("cleanup_work_func", _cleanup_work_func)],
    init=_shadow_mod_init,
    exit=_shadow_mod_exit,
)


def _leak_ctor(obj, data, leak) -> int:
    if leak is None:
        return -22
    data.value = leak
    return 0


def _leak_dtor(fix: str):
    def dtor(call_or_ctx, d, data) -> None:
        call_or_ctx.pr_info(f"livepatch_{fix}_dummy_leak_dtor: dummy @ {hashed_pointer(d)}, "
                            f"prevented leak @ {hashed_pointer(data.value)}")
    return dtor


def _fix_free(fix: str, counter: bool):
    def free(call: CallContext, d: Dummy) -> None:
        ctx, shadow = call.module, call.kernel.shadow
        if shadow.get(d, SV_LEAK) is not None:
            shadow.free(d, SV_LEAK, lambda obj, data: _leak_dtor(fix)(ctx, obj, data))
        else:
            ctx.pr_info(f"livepatch_{fix}_dummy_free: dummy @ {hashed_pointer(d)} leaked!")
        if counter:
            count = shadow.get(d, SV_COUNTER)
            if count is not None:
                ctx.pr_info(f"livepatch_fix2_dummy_free: dummy @ {hashed_pointer(d)}, "
                            f"check counter = {count.value}")
                shadow.free(d, SV_COUNTER, None)
    return free


def _fix1_dummy_alloc(call: CallContext) -> Dummy | None:
    d = Dummy(call.kernel.jiffies() + 1000 * EXPIRE_PERIOD * call.kernel.HZ // 1000)
    leak = object()
    if call.kernel.shadow.alloc(d, SV_LEAK, 8, _leak_ctor, leak) is None:
        call.module.printk(3, f"livepatch_shadow_fix1: livepatch_fix1_dummy_alloc: failed to allocate shadow "
                              f"variable for the leaking pointer: dummy @ {hashed_pointer(d)}, "
                              f"leak @ {hashed_pointer(leak)}")
        return None
    call.module.pr_info(f"livepatch_fix1_dummy_alloc: dummy @ {hashed_pointer(d)}, expires @ {d.jiffies_expire:x}")
    return d


def _fix2_dummy_check(call: CallContext, d: Dummy, jiffies: int) -> bool:
    count = call.kernel.shadow.get_or_alloc(d, SV_COUNTER, 4)
    if count is not None:
        count.value = (count.value or 0) + 1
    return jiffies > d.jiffies_expire


def _fix_exit(sv_id: int, dtor_fix: str | None):
    def exit_(ctx: ModuleContext) -> None:
        dtor = (lambda obj, data: _leak_dtor(dtor_fix)(ctx, obj, data)) if dtor_fix else None
        ctx.kernel.shadow.free_all(sv_id, dtor)
    return exit_


livepatch_shadow_fix1 = ModuleDef(
    name="livepatch_shadow_fix1",
    livepatch=True,
    patch=Patch(objs=[Object("livepatch_shadow_mod", [
        Func("dummy_alloc", _fix1_dummy_alloc, new_name="livepatch_fix1_dummy_alloc"),
        Func("dummy_free", _fix_free("fix1", counter=False), new_name="livepatch_fix1_dummy_free")])]),
    exit=_fix_exit(SV_LEAK, "fix1"),
)

livepatch_shadow_fix2 = ModuleDef(
    name="livepatch_shadow_fix2",
    livepatch=True,
    patch=Patch(objs=[Object("livepatch_shadow_mod", [
        Func("dummy_check", _fix2_dummy_check, new_name="livepatch_fix2_dummy_check"),
        Func("dummy_free", _fix_free("fix2", counter=True), new_name="livepatch_fix2_dummy_free")])]),
    exit=_fix_exit(SV_COUNTER, None),
)

MODULES = [livepatch_sample, livepatch_callbacks_demo, livepatch_callbacks_mod, livepatch_callbacks_busymod,
           livepatch_shadow_mod, livepatch_shadow_fix1, livepatch_shadow_fix2]
