"""Redirection through ftrace (kernel/livepatch/patch.c).

One :class:`KlpOps` per original function, shared by every patch that
replaces it; its ``func_stack`` holds the newest patch's func first.  The
handler decides per call which body runs, consulting the calling task's
``patch_state`` while the top func is in transition.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from ..ftrace import FtraceOps, OpsFlag, Regs
from ..printk import KERN_ERR
from ..symbols import KFunc
from ..tasks import KLP_UNPATCHED, Task
from .objects import KlpFunc, KlpObject, KlpPatch

if TYPE_CHECKING:
    from .core import Livepatch


@attrs.define(eq=False)
class KlpOps:
    old_func: KFunc
    fops: FtraceOps
    func_stack: list[KlpFunc] = attrs.field(factory=list)  # [0] is the newest


def klp_ftrace_handler(ops: KlpOps, task: Task, regs: Regs) -> None:
    if not ops.func_stack:
        return
    func = ops.func_stack[0]
    if func.transition and task.patch_state == KLP_UNPATCHED:
        # this task has not switched yet: it still runs the previous patch's
        # code, or the original when there is none
        if len(ops.func_stack) < 2:
            return
        func = ops.func_stack[1]
    if func.nop or func.new_func is None:
        return
    regs.ip = func.new_func


def klp_patch_func(klp: "Livepatch", func: KlpFunc) -> int:
    if func.patched:
        return -errno.EINVAL
    old = func.old_func
    assert old is not None
    ops = klp.ops.get(old)
    if ops is None:
        if old.notrace:
            klp.pr(KERN_ERR, f"failed to find location for function '{func.old_name}'")
            return -errno.EINVAL
        fops = FtraceOps(func=lambda t, f, r: None,
                         flags=OpsFlag.DYNAMIC | OpsFlag.IPMODIFY | OpsFlag.PERMANENT,
                         owner="livepatch")
        ops = KlpOps(old, fops)
        fops.func = lambda task, traced, regs, o=ops: klp_ftrace_handler(o, task, regs)
        ret = klp.k.ftrace.set_filter_ip(fops, old)
        if ret:
            klp.pr(KERN_ERR, f"failed to set ftrace filter for function '{func.old_name}' ({ret})")
            return ret
        ret = klp.k.ftrace.register(fops)
        if ret:
            klp.pr(KERN_ERR, f"failed to register ftrace handler for function '{func.old_name}' ({ret})")
            klp.k.ftrace.clear_filter_ip(fops, old)
            return ret
        klp.ops[old] = ops
    ops.func_stack.insert(0, func)
    func.patched = True
    return 0


def klp_unpatch_func(klp: "Livepatch", func: KlpFunc) -> None:
    if not func.patched or func.old_func is None:
        return
    ops = klp.ops.get(func.old_func)
    if ops is not None:
        if func in ops.func_stack:
            ops.func_stack.remove(func)
        if not ops.func_stack:
            klp.k.ftrace.unregister(ops.fops)
            del klp.ops[func.old_func]
    func.patched = False


def klp_patch_object(klp: "Livepatch", obj: KlpObject) -> int:
    if obj.patched:
        return 0
    for func in obj.funcs:
        ret = klp_patch_func(klp, func)
        if ret:
            klp_unpatch_object(klp, obj)
            return ret
    obj.patched = True
    return 0


def klp_unpatch_object(klp: "Livepatch", obj: KlpObject, nops_only: bool = False) -> None:
    for func in obj.funcs:
        if nops_only and not func.nop:
            continue
        klp_unpatch_func(klp, func)
    if not nops_only:
        obj.patched = False


def klp_unpatch_objects(klp: "Livepatch", patch: KlpPatch, nops_only: bool = False) -> None:
    for obj in patch.objs:
        if obj.patched:
            klp_unpatch_object(klp, obj, nops_only)
