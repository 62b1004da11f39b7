"""The modules of the upstream livepatch selftests (test_modules/), rebuilt
with the public API: same names, parameters, objects, functions, callbacks
and printed lines (spec/test-modules.md)."""

from __future__ import annotations

from .api import (CallContext, Callbacks, Func, Function, ModuleContext, ModuleDef, Object, Param,
                  Patch)


def _patched_show(call: CallContext) -> str:
    """The replacement show (and get) functions print THIS_MODULE->name."""
    return f"{call.func.obj}: this has been live patched\n"


test_klp_livepatch = ModuleDef(
    name="test_klp_livepatch",
    description="Livepatch test: livepatch module",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    livepatch=True,
    patch=Patch(objs=[Object(None, [Func("cmdline_proc_show", _patched_show,
                                         new_name="livepatch_cmdline_proc_show")])]),
)

test_klp_atomic_replace = ModuleDef(
    name="test_klp_atomic_replace",
    description="Livepatch test: atomic replace",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    livepatch=True,
    params=[Param("replace", "int", 0, 0o644, "replace (default=0)")],
    patch=lambda ctx: Patch(
        objs=[Object(None, [Func("meminfo_proc_show", _patched_show,
                                 new_name="livepatch_meminfo_proc_show")])],
        replace=bool(ctx.param("replace"))),
)


def callback_info(ctx: ModuleContext, callback: str, obj) -> None:
    """The callback line every callbacks test module prints."""
    if obj.mod is None:
        ctx.pr_info(f"{callback}: vmlinux")
    else:
        ctx.pr_info(f"{callback}: {obj.mod.name} -> {obj.mod.state.kernel_string}")


def demo_callbacks(pre_patch_ret_param: str | None = None) -> Callbacks:
    """The four printing callbacks of the callbacks demo modules."""

    def pre_patch(ctx: ModuleContext, obj) -> int:
        callback_info(ctx, "pre_patch_callback", obj)
        return ctx.param(pre_patch_ret_param) if pre_patch_ret_param else 0

    return Callbacks(
        pre_patch=pre_patch,
        post_patch=lambda ctx, obj: callback_info(ctx, "post_patch_callback", obj),
        pre_unpatch=lambda ctx, obj: callback_info(ctx, "pre_unpatch_callback", obj),
        post_unpatch=lambda ctx, obj: callback_info(ctx, "post_unpatch_callback", obj),
    )


def patched_work_func(call: CallContext) -> None:
    call.module.pr_info("patched_work_func")


_demo_callbacks = demo_callbacks("pre_patch_ret")

test_klp_callbacks_demo = ModuleDef(
    name="test_klp_callbacks_demo",
    description="Livepatch test: livepatch demo",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    livepatch=True,
    params=[Param("pre_patch_ret", "int", 0, 0o644, "pre_patch_ret (default=0)")],
    patch=Patch(objs=[
        Object(None, [], _demo_callbacks),
        Object("test_klp_callbacks_mod", [], _demo_callbacks),
        Object("test_klp_callbacks_busy",
               [Func("busymod_work_func", patched_work_func, new_name="patched_work_func")],
               _demo_callbacks),
    ]),
)

test_klp_callbacks_demo2 = ModuleDef(
    name="test_klp_callbacks_demo2",
    description="Livepatch test: livepatch demo2",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    livepatch=True,
    params=[Param("replace", "int", 0, 0o644, "replace (default=0)")],
    patch=lambda ctx: Patch(objs=[Object(None, [], demo_callbacks())],
                            replace=bool(ctx.param("replace"))),
)


def say(line: str):
    """An init or exit that only prints ``line`` (with the module prefix)."""
    def fn(ctx: ModuleContext) -> int:
        ctx.pr_info(line)
        return 0
    return fn


test_klp_callbacks_mod = ModuleDef(
    name="test_klp_callbacks_mod",
    description="Livepatch test: target module",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    init=say("test_klp_callbacks_mod_init"),
    exit=say("test_klp_callbacks_mod_exit"),
)


def _busymod_work_func(call: CallContext) -> None:
    ctx = call.module
    ctx.pr_info("busymod_work_func enter")
    if ctx.param("block_transition"):
        # msleep(20) in a loop until the flag drops: the worker stays in here
        ctx.data["blocked"] = call.task
        call.kernel.sched.block_in_call(call.task, period_ns=20_000_000,
                                        until=lambda: not ctx.param("block_transition"),
                                        then=lambda: _busymod_done(ctx))
        return
    ctx.pr_info("busymod_work_func exit")


def _busymod_done(ctx: ModuleContext) -> None:
    ctx.data.pop("blocked", None)
    ctx.pr_info("busymod_work_func exit")


def _busy_init(ctx: ModuleContext) -> int:
    ctx.pr_info("test_klp_callbacks_busy_init")
    sched = ctx.kernel.sched
    sched.run_work(sched.spawn_kworker(), ctx.name, "busymod_work_func")
    return 0


def _busy_exit(ctx: ModuleContext) -> None:
    ctx.set_param("block_transition", False)
    worker = ctx.data.get("blocked")
    if worker is not None:
        ctx.kernel.sched.finish_blocked_call(worker)  # flush_work()
    ctx.pr_info("test_klp_callbacks_busy_exit")


test_klp_callbacks_busy = ModuleDef(
    name="test_klp_callbacks_busy",
    description="Livepatch test: busy target module",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    params=[Param("block_transition", "bool", False, 0o644, "block_transition (default=false)")],
    functions=[Function("busymod_work_func", _busymod_work_func)],
    init=_busy_init,
    exit=_busy_exit,
)


def _lp_sys_getpid(call: CallContext) -> int:
    ctx = call.module
    pids = ctx.param("klp_pids")
    for i, pid in enumerate(pids):
        if pid and pid == call.task.pid:
            pids[i] = 0
            ctx.data["npids_pending"] -= 1
    return call.task.tgid


def _syscall_init(ctx: ModuleContext) -> int:
    ctx.data["npids_pending"] = len(ctx.param("klp_pids"))
    ctx.kernel.add_kernel_dir(ctx.module, "test_klp_syscall", {
        "npids": (0o444, lambda: f"{ctx.data['npids_pending']}\n"),
    })
    ret = ctx.klp_enable_patch(Patch(objs=[Object(None, [
        Func("__x64_sys_getpid", _lp_sys_getpid, new_name="lp_sys_getpid")])]))
    if ret:
        ctx.kernel.module_freed(ctx.module)
    return ret


def _syscall_exit(ctx: ModuleContext) -> None:
    ctx.kernel.module_freed(ctx.module)


test_klp_syscall = ModuleDef(
    name="test_klp_syscall",
    description="Livepatch test: syscall transition",
    author="Filipe Xavier <felipe_life@live.com>",
    livepatch=True,
    params=[Param("klp_pids", "int_array", [], 0, "Array of pids to be transitioned to livepatched state.")],
    init=_syscall_init,
    exit=_syscall_exit,
)

# test_klp_mod_target and test_klp_mod_patch serve both forms of the upstream
# "module function patching" tests: the first (2026) shows the module's text in
# /proc/test_klp_mod_target (test_klp_mod_target_show, a proc_create_single()
# show function); the newer one, from the series that makes the tests build on
# 4.12 kernels, reads /sys/module/test_klp_mod_target/parameters/klp_mod_arg
# (test_klp_mod_target_get, the .get of a module_param_cb() with no .set).
# The target has both, the patch replaces both.

def _mod_target_show(call: CallContext) -> str:
    return f"{call.func.obj}: original output\n"


def _mod_target_init(ctx: ModuleContext) -> int:
    ctx.pr_info("test_klp_mod_target_init")
    ctx.kernel.proc_create_single(ctx.module, "test_klp_mod_target", ctx.function("test_klp_mod_target_show"))
    return 0


def _mod_target_exit(ctx: ModuleContext) -> None:
    ctx.pr_info("test_klp_mod_target_exit")
    ctx.kernel.remove_proc_entry("test_klp_mod_target")


test_klp_mod_target = ModuleDef(
    name="test_klp_mod_target",
    description="Livepatch test: target module with proc entry",
    author="Pablo Hugen <phugen@redhat.com>",
    params=[Param("klp_mod_arg", perm=0o444, description="The value of this argument will be livepatched",
                  get="test_klp_mod_target_get")],
    functions=[Function("test_klp_mod_target_show", _mod_target_show),
               Function("test_klp_mod_target_get", _mod_target_show)],
    init=_mod_target_init,
    exit=_mod_target_exit,
)

test_klp_mod_patch = ModuleDef(
    name="test_klp_mod_patch",
    description="Livepatch test: patch for module-provided function",
    author="Pablo Hugen <phugen@redhat.com>",
    livepatch=True,
    patch=Patch(objs=[Object("test_klp_mod_target", [
        Func("test_klp_mod_target_show", _patched_show, new_name="livepatch_mod_target_show"),
        Func("test_klp_mod_target_get", _patched_show, new_name="livepatch_mod_target_get")])]),
    exit=lambda ctx: None,
)

MODULES: list[ModuleDef] = [
    test_klp_livepatch, test_klp_atomic_replace, test_klp_callbacks_demo, test_klp_callbacks_demo2,
    test_klp_callbacks_mod, test_klp_callbacks_busy, test_klp_syscall, test_klp_mod_target,
    test_klp_mod_patch,
]

