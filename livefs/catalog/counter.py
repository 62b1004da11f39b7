"""Why livepatch has a consistency model: two functions that must change together.

``klp_counter`` is a target module with a counter A.  Its workers (kthreads)
run cycles: ``counter_hold`` does ``A += 1``, sleeps ``hold_ms`` inside itself
(holding what A counts), then calls ``counter_drop``, which does ``A -= 1``;
between cycles a worker waits ``gap_ms`` in its loop.  ``klp_counter_fix``
changes the unit to 2: ``A += 2`` and ``A -= 2``.  Either version alone keeps
A at zero whenever no worker is inside a hold; a worker that holds with one
version and drops with the other leaves A off by one for good.

Without a consistency model (``--consistency-model immediate``) a worker asleep
in the old ``counter_hold`` wakes to the new ``counter_drop``.  The kernel's
hybrid model (and kpatch's) sees ``counter_hold`` on its stack and waits;
kGraft's switches it only when it is back at its loop.  ``cat /proc/klp_counter``
shows A; ``echo N > /sys/module/klp_counter/parameters/run`` stops the
workers after their current cycle, so a settled A can be read.
"""

from __future__ import annotations

from typing import Callable

from livefs.kernel.clock import NSEC_PER_MSEC

from .api import CallContext, Func, Function, ModuleContext, ModuleDef, Object, Param, Patch

TARGET = "klp_counter"


def _target(call: CallContext) -> ModuleContext:
    """The target module's context, from its own code or the livepatch's."""
    mod = call.kernel.modules.get(TARGET)
    assert mod is not None, "klp_counter is not loaded"
    return mod.ctx


def _hold(step: int) -> Callable[[CallContext], None]:
    """counter_hold with a unit of ``step``: count, sleep inside, drop."""

    def counter_hold(call: CallContext) -> None:
        ctx = _target(call)
        ctx.data["A"] += step
        k, task = call.kernel, call.task
        until = k.clock.now_ns + ctx.param("hold_ms") * NSEC_PER_MSEC
        ctx.data["holding"].add(task)
        # msleep(10) in a loop inside this function until the hold is over: a
        # stack check of this worker finds counter_hold on its stack
        k.sched.block_in_call(task, period_ns=10 * NSEC_PER_MSEC, until=lambda: k.clock.now_ns >= until,
                              then=lambda: _release(ctx, call))

    return counter_hold


def _release(ctx: ModuleContext, call: CallContext) -> None:
    ctx.data["holding"].discard(call.task)
    call.kernel.call(call.task, TARGET, "counter_drop")  # through ftrace: whichever version this task runs
    ctx.data["cycles"] += 1
    _next_cycle(ctx, call.task)


def _drop(step: int) -> Callable[[CallContext], None]:
    def counter_drop(call: CallContext) -> None:
        _target(call).data["A"] -= step

    return counter_drop


def _show(call: CallContext) -> str:
    ctx = _target(call)
    return f"A = {ctx.data['A']}\nholding = {len(ctx.data['holding'])}\ncycles = {ctx.data['cycles']}\n"


def _next_cycle(ctx: ModuleContext, worker) -> None:
    """The worker waits gap_ms in its loop, then runs the next cycle (while run=Y)."""
    sched = ctx.kernel.sched
    sched.kthread_loop(worker)
    if not ctx.param("run") or ctx.data.get("exiting"):
        return
    works = ctx.data["works"]
    works[worker] = ctx.kernel.wq.schedule(ctx.param("gap_ms") * NSEC_PER_MSEC, "klp_counter cycle",
                                           lambda: _cycle(ctx, worker))


def _cycle(ctx: ModuleContext, worker) -> None:
    ctx.data["works"].pop(worker, None)
    if ctx.param("run") and not ctx.data.get("exiting"):
        ctx.kernel.sched.run_work(worker, TARGET, "counter_hold")


def _init(ctx: ModuleContext) -> int:
    ctx.data.update(A=0, holding=set(), cycles=0, works={}, workers=[])
    ctx.kernel.proc_create_single(ctx.module, TARGET, ctx.function("counter_show"))
    for i in range(ctx.param("workers")):
        worker = ctx.kernel.sched.spawn_kworker()
        ctx.data["workers"].append(worker)
        ctx.data["works"][worker] = ctx.kernel.wq.schedule(i * ctx.param("stagger_ms") * NSEC_PER_MSEC,
                                                           "klp_counter cycle", lambda w=worker: _cycle(ctx, w))
    return 0


def _exit(ctx: ModuleContext) -> None:
    ctx.data["exiting"] = True
    for work in ctx.data["works"].values():
        work.cancel()
    for worker in list(ctx.data["holding"]):
        ctx.kernel.sched.finish_blocked_call(worker)  # flush: each hold ends, and drops
    for worker in ctx.data["workers"]:
        ctx.kernel.sched.exit(worker)
    ctx.kernel.remove_proc_entry(TARGET)


klp_counter = ModuleDef(
    name=TARGET,
    description="Consistency-model demo: a counter that two functions must change together",
    params=[Param("workers", "int", 2, 0o444, "worker kthreads running hold/drop cycles (default=2)"),
            Param("hold_ms", "int", 1500, 0o644, "how long counter_hold sleeps before it drops (default=1500)"),
            Param("gap_ms", "int", 700, 0o644, "how long a worker waits between cycles (default=700)"),
            Param("stagger_ms", "int", 400, 0o444, "delay between the workers' first cycles (default=400)"),
            Param("run", "bool", True, 0o644, "N: workers stop after their current cycle (default=Y)")],
    functions=[Function("counter_hold", _hold(1)), Function("counter_drop", _drop(1)),
               Function("counter_show", _show)],
    init=_init,
    exit=_exit,
)

klp_counter_fix = ModuleDef(
    name="klp_counter_fix",
    description="Consistency-model demo: counts klp_counter in twos (hold and drop change together)",
    livepatch=True,
    patch=Patch(objs=[Object(TARGET, [Func("counter_hold", _hold(2), new_name="livepatch_counter_hold"),
                                      Func("counter_drop", _drop(2), new_name="livepatch_counter_drop")])]),
)

MODULES = [klp_counter, klp_counter_fix]
