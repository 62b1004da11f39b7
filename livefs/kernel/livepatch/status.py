"""A person's view of livepatch state: patches, the transition, who blocks it.

One set of facts (:func:`status_data`) is shown two ways: the table of
``livefs status`` and the JSON of ``livefs status --json``, so the two never
disagree.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

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


def status_data(k: "Kernel") -> dict[str, Any]:
    lp = k.livepatch
    patches = [{
        "name": p.name, "enabled": p.enabled, "transition": p is lp.transition_patch,
        "stack_order": lp.stack_order(p) if p in lp.patches else None, "replace": p.replace,
        "forced": p.forced,
        "objects": [{"name": o.sysfs_name, "patched": o.patched} for o in p.objs],
    } for p in lp.sysfs_patches]
    data: dict[str, Any] = {"consistency_model": lp.model.value, "patches": patches, "transition": None}
    patch = lp.transition_patch
    if patch is None:
        return data
    tasks = list(k.tasks.all_with_idle())
    pending = sorted((t for t in tasks if t.patch_state != lp.target_state), key=lambda t: t.pid)
    data["transition"] = {
        "patch": patch.name, "target": "patched" if lp.target_state == KLP_PATCHED else "unpatched",
        "attempt": lp.signals_cnt, "switched": len(tasks) - len(pending), "tasks": len(tasks),
        "pending": [{
            "pid": t.pid, "comm": t.comm,
            "state": t.state.value if t.state is not RunState.RUNNING or t.cpu is not None else "running",
            "blocked_by": klp_check_task(lp, t), "where": _where(t),
        } for t in pending],
    }
    return data


def status_json(k: "Kernel") -> str:
    return json.dumps(status_data(k), indent=1) + "\n"


def transitions_json(k: "Kernel") -> str:
    """The recent transitions' records, oldest first, and the model's time
    now (the end of a transition still running): what ``livefs timeline`` draws."""
    return json.dumps({"now_ns": k.clock.now_ns, "records": [r.as_dict() for r in k.livepatch.log]},
                      separators=(",", ":")) + "\n"


def render_status(k: "Kernel") -> str:
    data = status_data(k)
    out = []
    if not data["patches"]:
        out.append("no livepatches")
    else:
        out.append(f"{'PATCH':<28} {'ENABLED':>7} {'TRANSITION':>10} {'STACK_ORDER':>11} {'REPLACE':>7} "
                   f"{'FORCED':>6}  OBJECTS")
        for p in data["patches"]:
            objs = ", ".join(f"{o['name']}{'' if o['patched'] else ' (not patched)'}" for o in p["objects"])
            order = "-" if p["stack_order"] is None else p["stack_order"]
            out.append(f"{p['name']:<28} {int(p['enabled']):>7} {int(p['transition']):>10} {order:>11} "
                       f"{int(p['replace']):>7} {int(p['forced']):>6}  {objs}")
    tr = data["transition"]
    if tr is None:
        out.append("")
        out.append("no transition in progress")
        return "\n".join(out) + "\n"
    out.append("")
    model = "" if data["consistency_model"] == "hybrid" else f" ({data['consistency_model']} model)"
    out.append(f"transition: '{tr['patch']}' to {tr['target']}, attempt {tr['attempt']}, "
               f"{tr['switched']} of {tr['tasks']} tasks switched{model}")
    if tr["pending"]:
        out.append(f"{'PID':>7} {'COMM':<16} {'STATE':<9} {'BLOCKED BY':<40} WHERE")
        for t in tr["pending"]:
            why = t["blocked_by"] or "switches at its next chance"
            out.append(f"{t['pid']:>7} {t['comm']:<16} {t['state']:<9} {why:<40} {t['where']}")
    return "\n".join(out) + "\n"
