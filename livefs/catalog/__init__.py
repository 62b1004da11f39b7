"""Simulated modules: the upstream selftest modules and samples, by name."""

from __future__ import annotations

from livefs.kernel.moddef import ModuleDef

from . import counter, klp_kprobe, klp_shadow, klp_state, oracle, samples, selftests


def catalog() -> dict[str, ModuleDef]:
    return {m.name: m for m in selftests.MODULES + klp_state.MODULES + klp_shadow.MODULES + klp_kprobe.MODULES
                                  + samples.MODULES + oracle.MODULES + counter.MODULES}


def find(name: str) -> ModuleDef | None:
    return catalog().get(name.replace("-", "_"))
