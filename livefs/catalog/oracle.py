"""The oracle's own modules (../shared/oracle/modules), declared for livefs.

These are the six small modules the real-kernel oracle loads in its scenarios
(tests/transcripts/): ``lp_cmdline``, ``lp_cmdline2`` and ``lp_replace`` patch
``cmdline_proc_show``; ``lp_callbacks`` has the four callbacks, a
``pre_patch_ret`` parameter and patches ``version_proc_show``;
``lp_busy_target`` is an ordinary module whose kthread ``lp_busy_worker`` sleeps
inside ``lp_busy_target_wait()`` while its ``hold`` parameter is set, and
``lp_busy`` patches that function (its replacement sleeps while lp_busy's own
``hold`` is set).  Written from the modules' behaviour: names, parameters,
descriptions, printed lines, patched functions and replacement symbol names.

lp_busy_target's worker is a kthread of the module API (``ctx.kthread_run``,
``call.msleep``, ``call.kthread_should_stop``, ``ctx.kthread_stop``), written
line for line from the C.
"""

from __future__ import annotations

from .api import (CallContext, Callbacks, Func, Function, ModuleContext, ModuleDef, Object, Param, Patch,
                  Symtab)

# -- lp_cmdline, lp_cmdline2, lp_replace --------------------------------------------------


def _cmdline_module(name: str, marker: str, replace: bool) -> ModuleDef:
    def oracle_cmdline_show(call: CallContext) -> str:
        return marker + "\n"

    patch = Patch(objs=[Object(None, [Func("cmdline_proc_show", oracle_cmdline_show,
                                           new_name="oracle_cmdline_show")])], replace=replace)

    def init(ctx: ModuleContext) -> int:
        ctx.pr_info("init: calling klp_enable_patch")
        return ctx.klp_enable_patch(patch)

    def exit_(ctx: ModuleContext) -> None:
        ctx.pr_info("exit")

    # lp_cmdline.c's symbols as 6.12's kallsyms lists them (lp_cmdline2.c and
    # lp_replace.c only #define a marker and include it: the same counters)
    symtab = Symtab(init="oracle_init", exit="oracle_exit", data=["oracle_patch", "patch_objs", "vmlinux_funcs"],
                    unique_ids={"name": 451, "vermagic": 451, "retpoline": 452, "depends": 452, "license": 500,
                                "description": 501, "livepatch": 502, "__addressable_init_module": 498,
                                "__addressable_cleanup_module": 499},
                    undefined=["_printk", "seq_write"])
    return ModuleDef(name=name, description="oracle livepatch: /proc/cmdline marker", livepatch=True,
                     patch=patch, init=init, exit=exit_, symtab=symtab)


lp_cmdline = _cmdline_module("lp_cmdline", "LP_CMDLINE marker: patched by lp_cmdline", False)
lp_cmdline2 = _cmdline_module("lp_cmdline2", "LP_CMDLINE2 marker: patched by lp_cmdline2", False)
lp_replace = _cmdline_module("lp_replace", "LP_REPLACE marker: patched by lp_replace (replace=true)", True)


# -- lp_callbacks ----------------------------------------------------------------------------


def _objname(obj) -> str:
    return obj.name or "vmlinux"


def _cb_pre_patch(ctx: ModuleContext, obj) -> int:
    ret = ctx.param("pre_patch_ret")
    ctx.pr_info(f"pre_patch callback: obj={_objname(obj)} returning {ret}")
    return ret


_callbacks = Callbacks(
    pre_patch=_cb_pre_patch,
    post_patch=lambda ctx, obj: ctx.pr_info(f"post_patch callback: obj={_objname(obj)} (patch transition done)"),
    pre_unpatch=lambda ctx, obj: ctx.pr_info(
        f"pre_unpatch callback: obj={_objname(obj)} (unpatch transition about to start)"),
    post_unpatch=lambda ctx, obj: ctx.pr_info(
        f"post_unpatch callback: obj={_objname(obj)} (unpatch transition done)"),
)


def _oracle_version_show(call: CallContext) -> str:
    return "LP_CALLBACKS marker: /proc/version patched by lp_callbacks\n"


_callbacks_patch = Patch(objs=[Object(None, [Func("version_proc_show", _oracle_version_show,
                                                  new_name="oracle_version_show")], _callbacks)])


def _callbacks_init(ctx: ModuleContext) -> int:
    ctx.pr_info(f"init: pre_patch_ret={ctx.param('pre_patch_ret')}, calling klp_enable_patch")
    ret = ctx.klp_enable_patch(_callbacks_patch)
    ctx.pr_info(f"init: klp_enable_patch returned {ret}")
    return ret


lp_callbacks = ModuleDef(
    name="lp_callbacks",
    description="oracle livepatch: callbacks",
    livepatch=True,
    params=[Param("pre_patch_ret", "int", 0, 0o644, "return value of the pre_patch callback (0 = succeed)")],
    patch=_callbacks_patch,
    init=_callbacks_init,
    exit=lambda ctx: ctx.pr_info("exit"),
    # its __UNIQUE_ID_ counters were never recorded: left out
    symtab=Symtab(init="oracle_init", exit="oracle_exit", data=["oracle_patch", "patch_objs", "vmlinux_funcs"],
                  undefined=["_printk", "seq_write"]),
)


# -- lp_busy_target ------------------------------------------------------------------------------


def _hold(call: CallContext, ctx: ModuleContext) -> int:
    """Both modules' loop: msleep(100) while ``ctx``'s hold, up to hold_max_ms,
    unless the kthread is told to stop; the ms waited."""
    waited = 0
    while ctx.param("hold") and waited < ctx.param("hold_max_ms") and not call.kthread_should_stop():
        call.msleep(100)
        waited += 100
    return waited


def _lp_busy_target_wait(call: CallContext) -> int:
    ctx = call.module
    ctx.pr_info(f"original lp_busy_target_wait entered (pid {call.task.pid})")
    waited = _hold(call, ctx)
    ctx.pr_info(f"original lp_busy_target_wait returns after {waited} ms")
    return 0


def _lp_busy_target_msg(call: CallContext) -> str:
    return "LP_BUSY_TARGET: original lp_busy_target_msg"


def _target_proc_show(call: CallContext) -> str:
    return call.kernel.call(call.task, "lp_busy_target", "lp_busy_target_msg") + "\n"


def _worker_fn(call: CallContext) -> int:
    while not call.kthread_should_stop():
        if call.module.param("hold"):
            call.kernel.call(call.task, "lp_busy_target", "lp_busy_target_wait")
        else:
            call.msleep(50)
    return 0


def _target_init(ctx: ModuleContext) -> int:
    ctx.kernel.proc_create_single(ctx.module, "lp_busy_target", ctx.function("target_proc_show"))
    worker = ctx.kthread_run("worker_fn", "lp_busy_worker")
    ctx.data["worker"] = worker
    ctx.pr_info(f"loaded, worker pid {worker.pid}, hold={int(bool(ctx.param('hold')))}")
    return 0


def _target_exit(ctx: ModuleContext) -> None:
    ctx.kthread_stop(ctx.data["worker"])
    ctx.kernel.remove_proc_entry("lp_busy_target")
    ctx.pr_info("unloaded")


lp_busy_target = ModuleDef(
    name="lp_busy_target",
    description="oracle: target module with a function a kthread sleeps in",
    params=[Param("hold", "bool", True, 0o644, "keep the worker sleeping inside lp_busy_target_wait()"),
            Param("hold_max_ms", "uint", 600000, 0o644, "upper bound of one sleep in lp_busy_target_wait()")],
    # sizes and call sites of the real .ko's functions (6.12 /proc/PID/stack of
    # the worker): worker_fn's call of lp_busy_target_wait (or its replacement),
    # lp_busy_target_wait's msleep(100)
    functions=[Function("lp_busy_target_wait", _lp_busy_target_wait, size=0x80, calls={"msleep": 0x49}),
               Function("lp_busy_target_msg", _lp_busy_target_msg),
               Function("worker_fn", _worker_fn, calls={"*": 0x22}),
               Function("target_proc_show", _target_proc_show)],
    init=_target_init,
    exit=_target_exit,
    symtab=Symtab(init="target_init", exit="target_exit", bss=["pde", "worker"],
                  unique_ids={"__addressable_cleanup_module": 459}),
)


# -- lp_busy -------------------------------------------------------------------------------------


def _new_wait(call: CallContext) -> int:
    ctx = call.module  # lp_busy's context: the replacement belongs to it
    ctx.pr_info(f"patched lp_busy_target_wait entered (pid {call.task.pid})")
    waited = _hold(call, ctx)
    if not waited:
        call.msleep(100)
    ctx.pr_info(f"patched lp_busy_target_wait returns after {waited} ms")
    return 0


def _new_msg(call: CallContext) -> str:
    return "LP_BUSY marker: lp_busy_target_msg patched by lp_busy"


lp_busy = ModuleDef(
    name="lp_busy",
    description="oracle livepatch: patches lp_busy_target",
    livepatch=True,
    params=[Param("hold", "bool", False, 0o644,
                  "keep callers sleeping inside the patched lp_busy_target_wait()"),
            Param("hold_max_ms", "uint", 600000, 0o644)],
    patch=Patch(objs=[Object("lp_busy_target", [
        Func("lp_busy_target_wait", _new_wait, new_name="new_wait", size=0x90, calls={"msleep": 0x49}),
        Func("lp_busy_target_msg", _new_msg, new_name="new_msg")])]),
    exit=lambda ctx: None,
    symtab=Symtab(init="oracle_init", exit="oracle_exit", data=["oracle_patch", "patch_objs", "target_funcs"],
                  unique_ids={"name": 451, "vermagic": 451, "retpoline": 452, "depends": 452, "holdtype": 498,
                              "hold": 499, "hold_max_mstype": 500, "license": 505, "description": 506,
                              "livepatch": 507, "__addressable_init_module": 503,
                              "__addressable_cleanup_module": 504},
                  undefined=["_printk", "const_pcpu_hot", "kthread_should_stop", "msleep"]),
)

MODULES: list[ModuleDef] = [lp_cmdline, lp_cmdline2, lp_replace, lp_callbacks, lp_busy_target, lp_busy]
