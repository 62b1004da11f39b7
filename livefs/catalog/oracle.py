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

The model has no kthread API yet (issue 12): ``kthread_run()``, ``msleep()``
in a loop and ``kthread_stop()`` are built here from the scheduler's
internals (``Scheduler.block_in_call``, the work queue, ``TaskList``).
"""

from __future__ import annotations

import weakref
from typing import Callable

from livefs.kernel.clock import NSEC_PER_MSEC
from livefs.kernel.livepatch.transition import klp_copy_process
from livefs.kernel.tasks import RunState, Task, TaskKind

from .api import CallContext, Callbacks, Func, Function, ModuleContext, ModuleDef, Object, Param, Patch

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

    return ModuleDef(name=name, description="oracle livepatch: /proc/cmdline marker", livepatch=True,
                     patch=patch, init=init, exit=exit_)


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
)


# -- a kthread built from scheduler internals ---------------------------------------------------
# What the caller does once a function it called returns; a function body that
# sleeps (block_in_call) returns asynchronously, so its caller's continuation
# waits here, keyed by task.
_CONTINUE: "weakref.WeakKeyDictionary[Task, Callable[[], None]]" = weakref.WeakKeyDictionary()


def _stack(ctx: ModuleContext, task: Task, *frames: str) -> None:
    """The kthread's stack: kthread(), then ``frames`` (module functions, or
    vmlinux ones such as msleep)."""
    k = ctx.kernel
    stack = [k.vmlinux_func("kthread")]
    for name in frames:
        found = k.symbols.find(ctx.name, name) or k.symbols.find("vmlinux", name)
        stack.append(found[0])
    task.stack = stack


def _kthread_run(ctx: ModuleContext, comm: str) -> Task:
    """kthread_run(): a kthread, child of kthreadd, born with its patch state."""
    k = ctx.kernel
    task = Task(k.tasks.new_pid(), comm[:15], TaskKind.KTHREAD, ppid=2, interruptible=False)
    klp_copy_process(k.livepatch, k.tasks.get(2), task)
    return k.tasks.add(task)


def _msleep_in_function(call: CallContext, keep_sleeping: Callable[[int], bool], on_return: Callable[[int], None],
                        at_least_once: bool = False) -> None:
    """``while (keep_sleeping(waited)) { msleep(100); waited += 100; }`` inside
    the running function (the task stays in it, so stack checks see it there),
    then ``on_return(waited)`` and the caller's continuation."""
    k, task = call.kernel, call.task
    state = {"waited": 0}

    def returned() -> None:
        on_return(state["waited"])
        cont = _CONTINUE.pop(task, None)
        if cont is not None:
            k.wq.schedule(0, "kthread loop", cont)

    if keep_sleeping(0):
        def until() -> bool:
            state["waited"] += 100
            return not keep_sleeping(state["waited"])
    elif at_least_once:  # lp_busy's new_wait: "if (!waited) msleep(100);"
        def until() -> bool:
            return True
    else:
        returned()
        return
    k.sched.block_in_call(task, period_ns=100 * NSEC_PER_MSEC, until=until, then=returned)


# -- lp_busy_target ------------------------------------------------------------------------------


def _target_should_stop(ctx: ModuleContext) -> bool:
    return bool(ctx.data.get("stop"))


def _lp_busy_target_wait(call: CallContext) -> int:
    ctx = call.module
    ctx.pr_info(f"original lp_busy_target_wait entered (pid {call.task.pid})")
    _msleep_in_function(
        call,
        keep_sleeping=lambda waited: bool(ctx.param("hold")) and waited < ctx.param("hold_max_ms")
        and not _target_should_stop(ctx),
        on_return=lambda waited: ctx.pr_info(f"original lp_busy_target_wait returns after {waited} ms"))
    return 0


def _lp_busy_target_msg(call: CallContext) -> str:
    return "LP_BUSY_TARGET: original lp_busy_target_msg"


def _target_proc_show(call: CallContext) -> str:
    return call.kernel.call(call.task, "lp_busy_target", "lp_busy_target_msg") + "\n"


def _worker_fn(ctx: ModuleContext) -> None:
    """One pass of worker_fn's loop: call lp_busy_target_wait() while hold,
    else msleep(50)."""
    k, task = ctx.kernel, ctx.data["worker"]
    ctx.data["work"] = None
    if _target_should_stop(ctx):
        return
    if ctx.param("hold"):
        _stack(ctx, task, "worker_fn")
        task.state, task.cpu = RunState.RUNNING, 0
        _CONTINUE[task] = lambda: _worker_fn(ctx)
        outer, k.current = k.current, task
        try:
            k.call(task, "lp_busy_target", "lp_busy_target_wait")
        finally:
            k.current = outer
            if not k.sched.is_blocked(task):
                task.state, task.cpu = RunState.SLEEPING, None
        return
    _stack(ctx, task, "worker_fn", "msleep")
    task.state, task.cpu = RunState.SLEEPING, None
    ctx.data["work"] = k.wq.schedule(50 * NSEC_PER_MSEC, "msleep", lambda: _worker_fn(ctx))


def _target_init(ctx: ModuleContext) -> int:
    k = ctx.kernel
    k.proc_create_single(ctx.module, "lp_busy_target", ctx.function("target_proc_show"))
    worker = _kthread_run(ctx, "lp_busy_worker")
    ctx.data["worker"] = worker
    _stack(ctx, worker, "worker_fn", "msleep")
    ctx.data["work"] = k.wq.schedule(0, "kthread start", lambda: _worker_fn(ctx))
    ctx.pr_info(f"loaded, worker pid {worker.pid}, hold={int(bool(ctx.param('hold')))}")
    return 0


def _target_exit(ctx: ModuleContext) -> None:
    k = ctx.kernel
    worker = ctx.data["worker"]
    ctx.data["stop"] = True  # kthread_stop(): should_stop, wake it, wait for it to end
    work = ctx.data.pop("work", None)
    if work is not None:
        work.cancel()
    if k.sched.is_blocked(worker):
        k.sched.finish_blocked_call(worker)
    _CONTINUE.pop(worker, None)
    k.tasks.remove(worker.pid)
    k.remove_proc_entry("lp_busy_target")
    ctx.pr_info("unloaded")


lp_busy_target = ModuleDef(
    name="lp_busy_target",
    description="oracle: target module with a function a kthread sleeps in",
    params=[Param("hold", "bool", True, 0o644, "keep the worker sleeping inside lp_busy_target_wait()"),
            Param("hold_max_ms", "uint", 600000, 0o644, "upper bound of one sleep in lp_busy_target_wait()")],
    functions=[Function("lp_busy_target_wait", _lp_busy_target_wait),
               Function("lp_busy_target_msg", _lp_busy_target_msg),
               Function("worker_fn", lambda call: None),
               Function("target_proc_show", _target_proc_show)],
    init=_target_init,
    exit=_target_exit,
)


# -- lp_busy -------------------------------------------------------------------------------------


def _new_wait(call: CallContext) -> int:
    ctx = call.module  # lp_busy's context: the replacement belongs to it
    target = call.kernel.modules.get("lp_busy_target")
    stopping = (lambda: bool(target.ctx.data.get("stop"))) if target is not None else (lambda: False)
    ctx.pr_info(f"patched lp_busy_target_wait entered (pid {call.task.pid})")
    _msleep_in_function(
        call,
        keep_sleeping=lambda waited: bool(ctx.param("hold")) and waited < ctx.param("hold_max_ms")
        and not stopping(),
        on_return=lambda waited: ctx.pr_info(f"patched lp_busy_target_wait returns after {waited} ms"),
        at_least_once=True)
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
        Func("lp_busy_target_wait", _new_wait, new_name="new_wait"),
        Func("lp_busy_target_msg", _new_msg, new_name="new_msg")])]),
    exit=lambda ctx: None,
)

MODULES: list[ModuleDef] = [lp_cmdline, lp_cmdline2, lp_replace, lp_callbacks, lp_busy_target, lp_busy]
