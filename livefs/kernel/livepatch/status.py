"""A person's view of livepatch state: patches, the transition, who blocks it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..tasks import KLP_PATCHED, RunState
from .transition import klp_check_task

if TYPE_CHECKING:
    from ..kernel import Kernel


def _where(task) -> str:
    frames = [f for f in task.stack if f.name not in ("schedule", "msleep", "do_syscall_64", "kthread")]
    if not frames:
        return "-"
    f = frames[-1]
    return f.name if f.obj == "vmlinux" else f"{f.name} [{f.obj}]"


def render_status(k: "Kernel") -> str:
    lp = k.livepatch
    out = []
    if not lp.sysfs_patches:
        out.append("no livepatches")
    else:
        out.append(f"{'PATCH':<28} {'ENABLED':>7} {'TRANSITION':>10} {'STACK_ORDER':>11} {'REPLACE':>7} "
                   f"{'FORCED':>6}  OBJECTS")
        for p in lp.sysfs_patches:
            objs = ", ".join(f"{o.sysfs_name}{'' if o.patched else ' (not patched)'}" for o in p.objs)
            order = lp.stack_order(p) if p in lp.patches else "-"
            out.append(f"{p.name:<28} {int(p.enabled):>7} {int(p is lp.transition_patch):>10} {order:>11} "
                       f"{int(p.replace):>7} {int(p.forced):>6}  {objs}")
    patch = lp.transition_patch
    if patch is None:
        out.append("")
        out.append("no transition in progress")
        return "\n".join(out) + "\n"
    tasks = list(k.tasks.all_with_idle())
    switched = [t for t in tasks if t.patch_state == lp.target_state]
    target = "patched" if lp.target_state == KLP_PATCHED else "unpatched"
    out.append("")
    out.append(f"transition: '{patch.name}' to {target}, attempt {lp.signals_cnt}, "
               f"{len(switched)} of {len(tasks)} tasks switched")
    pending = [t for t in tasks if t.patch_state != lp.target_state]
    if pending:
        out.append(f"{'PID':>7} {'COMM':<16} {'STATE':<9} {'BLOCKED BY':<40} WHERE")
        for t in sorted(pending, key=lambda t: t.pid):
            why = klp_check_task(lp, t) or "switches at its next chance"
            state = t.state.value if t.state is not RunState.RUNNING or t.cpu is not None else "running"
            out.append(f"{t.pid:>7} {t.comm:<16} {state:<9} {why:<40} {_where(t)}")
    return "\n".join(out) + "\n"
