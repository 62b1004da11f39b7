"""The module loader and the log as kernel/module/main.c, kernel/livepatch/core.c,
kernel/printk/printk.c and kmod have them (issue 12): delete_module(2)'s refusals,
duplicate names in a patch, load_module()'s order, multi-line records and the
ring's size, MODULE_PARM_DESC-less parameters.  Virtual time only."""

from __future__ import annotations

import errno

import pytest

from livefs.kernel.kernel import Kernel
from livefs.kernel.moddef import Func, Function, ModuleDef, Object, Param, Patch
from livefs.kernel.modules import ModuleState
from livefs.kernel.printk import KERN_DEBUG


@pytest.fixture
def k() -> Kernel:
    return Kernel(ncpus=1)


def _tag(version: str):
    return lambda call: version


def _log_since(k: Kernel, first: int) -> list[tuple[int, str]]:
    return [(r.level, r.text) for r in k.printk.records if r.seq >= first and r.level != KERN_DEBUG
            and "taint" not in r.text]


def _load(k: Kernel, defn: ModuleDef, args: str = "") -> tuple[int, list[tuple[int, str]]]:
    """insmod from a task of its own: (return value, the new records as (level, text))."""
    first = k.printk.next_seq
    with k.syscall(k.task_for(k.tasks.new_pid(), "insmod")):
        ret = k.load_module(defn, args)
    return ret, _log_since(k, first)


# -- 1. delete_module(2) ---------------------------------------------------------------------------


def test_a_module_with_init_and_no_exit_is_not_removable(k):
    defn = ModuleDef(name="lf_noexit", description="init, no exit", init=lambda ctx: 0)
    assert k.load_module(defn) == 0
    assert k.delete_module("lf_noexit") == -errno.EBUSY
    assert k.modules.get("lf_noexit").state is ModuleState.LIVE
    assert "lf_noexit 16384 0 [permanent], Live" in k.modules.get("lf_noexit").proc_modules_line(False)


def test_rmmod_force_removes_a_permanent_module_and_taints_R(k):
    """try_force_unload() with O_TRUNC (CONFIG_MODULE_FORCE_UNLOAD=y on Debian): TAINT_FORCED_RMMOD."""
    assert k.load_module(ModuleDef(name="lf_noexit", description="init, no exit", init=lambda ctx: 0)) == 0
    assert k.modules.delete("lf_noexit", force=True) == 0
    assert k.modules.get("lf_noexit") is None
    assert k.modules.tainted & (1 << 3)


def test_a_module_without_init_or_exit_is_removable(k):
    assert k.load_module(ModuleDef(name="lf_bare", description="no init, no exit")) == 0
    assert k.delete_module("lf_bare") == 0


def test_a_module_in_use_is_ewouldblock_unless_forced(k):
    assert k.load_module(ModuleDef(name="lf_used", description="used", init=lambda ctx: 0,
                                   exit=lambda ctx: None)) == 0
    mod = k.modules.get("lf_used")
    assert k.modules.try_module_get(mod)
    assert k.delete_module("lf_used") == -errno.EWOULDBLOCK
    assert k.modules.delete("lf_used", force=True) == 0


def test_a_coming_module_is_ebusy(k):
    """rmmod while the module's init runs: MODULE_STATE_COMING, 'already dying' -> EBUSY."""
    seen = {}

    def init(ctx) -> int:
        seen["state"] = ctx.module.state
        seen["ret"] = ctx.kernel.delete_module(ctx.name)
        return 0

    assert k.load_module(ModuleDef(name="lf_coming", description="coming", init=init,
                                   exit=lambda ctx: None)) == 0
    assert seen == {"state": ModuleState.COMING, "ret": -errno.EBUSY}
    assert k.delete_module("lf_coming") == 0


def test_a_going_module_is_ebusy(k):
    seen = {}

    def exit_(ctx) -> None:
        seen["ret"] = ctx.kernel.delete_module(ctx.name)

    assert k.load_module(ModuleDef(name="lf_going", description="going", init=lambda ctx: 0, exit=exit_)) == 0
    assert k.delete_module("lf_going") == 0
    assert seen == {"ret": -errno.EBUSY}


def test_an_unknown_module_is_enoent(k):
    assert k.delete_module("lf_nothing") == -errno.ENOENT
