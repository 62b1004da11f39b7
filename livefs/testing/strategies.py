"""Hypothesis strategies for livepatch models: target code, patches, tasks.

Generated functions return a tag saying which version ran
(``"<object>:<function>:<patch or orig>"``), so a test can tell old code from
new by calling them.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st

from livefs.kernel.moddef import Func, Function, ModuleDef, Object, Param, Patch

VMLINUX_TARGETS = ("lf_vm_alpha", "lf_vm_beta", "lf_vm_gamma")
MODULE_TARGETS = {"lf_tgt_a": ("a_one", "a_two"), "lf_tgt_b": ("b_one", "b_two", "b_three")}


def tag_body(obj: str, func: str, version: str):
    def body(call: Any) -> str:
        return f"{obj}:{func}:{version}"
    body.__name__ = f"{func}_{version}"
    return body


def target_module(name: str) -> ModuleDef:
    """A target module whose functions report themselves as the original."""
    funcs = MODULE_TARGETS[name]
    return ModuleDef(name=name, description="livefs generated target",
                     functions=[Function(f, tag_body(name, f, "orig")) for f in funcs])


def all_targets() -> list[tuple[str | None, str]]:
    return [(None, f) for f in VMLINUX_TARGETS] + [(m, f) for m, fs in MODULE_TARGETS.items() for f in fs]


@attrs.frozen
class PatchSpec:
    """A generated livepatch: which (object, function) pairs it replaces."""

    name: str
    targets: tuple[tuple[str | None, str], ...]
    replace: bool

    def module(self) -> ModuleDef:
        objs: dict[str | None, Object] = {}
        for obj, func in self.targets:
            objs.setdefault(obj, Object(obj, []))
            objs[obj].funcs.append(Func(func, tag_body(obj or "vmlinux", func, self.name),
                                        new_name=f"{self.name}_{func}"))
        return ModuleDef(name=self.name, description="livefs generated livepatch", livepatch=True,
                         params=[Param("note", "int", 0, 0o644, "unused")],
                         patch=Patch(objs=list(objs.values()), replace=self.replace))


def patch_specs(names: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[PatchSpec]:
    names = names or st.sampled_from([f"lf_lp_{i}" for i in range(6)])
    targets = st.lists(st.sampled_from(all_targets()), min_size=1, max_size=4, unique=True)
    return st.builds(PatchSpec, names, targets.map(tuple), st.booleans())


@attrs.frozen
class TaskSpec:
    """Where a staged task is: sleeping in a function, spinning, or in user space."""

    kind: str  # "kthread" | "user"
    where: str  # "sleep" | "spin" | "user"
    func: str | None


def task_specs() -> st.SearchStrategy[TaskSpec]:
    funcs = st.sampled_from([f for _, f in all_targets()] + ["schedule", "worker_thread"])
    return st.one_of(
        st.builds(TaskSpec, st.sampled_from(["kthread", "user"]), st.just("sleep"), funcs),
        st.builds(TaskSpec, st.just("kthread"), st.just("spin"), funcs),
        st.builds(TaskSpec, st.just("user"), st.just("user"), st.none()),
    )
