"""Patch lifecycle (kernel/livepatch/core.c): enable, disable, replace,
late module loading, the sysfs attribute semantics, and freeing.

The model keeps the kernel's two lists apart: ``patches`` is ``klp_patches``
(enabled patches and the one in transition, in enabling order: what
``stack_order`` counts), while ``sysfs_patches`` holds every patch whose
kobject still exists (a patch leaves ``patches`` at once when it is freed but
its directory goes only when the free work runs).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import attrs

from ..moddef import Patch, State
from ..panic import FINIT_MODULE_USER_REGS, init_module_path, print_dump_stack, warn_on_once
from ..printk import KERN_DEBUG, KERN_ERR, KERN_NOTICE, KERN_WARNING, DebugSite
from ..symbols import KFunc
from ..tasks import KLP_PATCHED, KLP_UNDEFINED, KLP_UNPATCHED
from ..clock import Work
from . import transition as tr
from .consistency import ConsistencyModel
from .objects import KlpFunc, KlpObject, KlpPatch
from .record import TransitionLog
from .patch import KlpOps, klp_patch_object, klp_unpatch_object, klp_unpatch_objects

if TYPE_CHECKING:
    from ..kernel import Kernel
    from ..modules import Module

__all__ = ["Livepatch", "KlpPatch", "KlpObject", "KlpFunc"]


def kstrtobool(data: bytes) -> bool | None:
    """The kernel's kstrtobool(): first character decides; None on error."""
    if not data:
        return None
    c = chr(data[0])
    if c in "yYtT1":
        return True
    if c in "nNfF0":
        return False
    if c in "oO" and len(data) > 1:
        c2 = chr(data[1])
        if c2 in "nN":
            return True
        if c2 in "fF":
            return False
    return None


@attrs.define(eq=False)
class Livepatch:
    k: "Kernel"
    patches: list[KlpPatch] = attrs.field(factory=list)
    sysfs_patches: list[KlpPatch] = attrs.field(factory=list)
    transition_patch: KlpPatch | None = None
    target_state: int = KLP_UNDEFINED
    signals_cnt: int = 0
    ops: dict[KFunc, KlpOps] = attrs.field(factory=dict)
    transition_work: Work | None = None
    debug_sites: dict[str, DebugSite] = attrs.field(factory=dict)
    # called as fn(event, klp) at "complete" (every task still at its final
    # state, before the reset to -1): for invariant checkers, not for modules
    observers: list[Any] = attrs.field(factory=list)
    transition_forced: bool = False
    # which consistency model runs (only HYBRID is the kernel's), what the
    # recent transitions did, and the attempt in progress (1 = the one inside
    # the write that started the transition)
    model: ConsistencyModel = ConsistencyModel.HYBRID
    log: TransitionLog = attrs.field(factory=TransitionLog)
    attempt: int = 0

    def __attrs_post_init__(self) -> None:
        for key, (func, line, fmt) in tr.DEBUG_SITES.items():
            self.debug_sites[key] = self.k.dyndbg.add_site(
                DebugSite("livepatch", "kernel/livepatch/transition.c", line, func, fmt))

    # -- logging -----------------------------------------------------------
    def pr(self, level: int, msg: str) -> None:
        self.k.printk_task(level, f"livepatch: {msg}")

    def pr_debug(self, key: str, msg: str) -> None:
        if self.debug_sites[key].enabled:
            self.k.printk_task(KERN_DEBUG, f"livepatch: {msg}")

    def set_cond_resched(self, on: bool) -> None:
        """klp_cond_resched_enable()/disable() (klp_resched_enable() from v6.16):
        the static key that lets tasks at a scheduling point try to switch
        themselves; before v6.4 there is none."""
        key = self.k.jump_labels.key("klp_sched_try_switch_key")
        if key is None:
            return
        if on:
            self.k.jump_labels.enable(key)
            self.k.sched.cond_resched_armed()
        else:
            self.k.jump_labels.disable(key)

    @property
    def cond_resched_enabled(self) -> bool:
        return self.sched_switch_enabled("cond_resched")

    def sched_switch_enabled(self, where: str) -> bool:
        """Whether klp_sched_try_switch() in ``where`` (cond_resched or
        __schedule, by version) would try a switch right now."""
        if self.k.version.klp_sched_switch != where:
            return False
        return self.k.jump_labels.site_value(self.k.vmlinux_func(where), "klp_sched_try_switch_key")

    # -- transition work -----------------------------------------------------
    def schedule_transition_work(self, delay_ns: int) -> None:
        if self.transition_work is not None and not self.transition_work.cancelled \
                and self.transition_work.due_ns >= self.k.clock.now_ns:
            return  # schedule_delayed_work() on pending work is a no-op
        self.transition_work = self.k.wq.schedule(delay_ns, "klp_transition_work",
                                                  self._transition_work_fn)

    def _transition_work_fn(self) -> None:
        self.transition_work = None
        if self.transition_patch is not None:
            with self.k.kworker():
                tr.klp_try_complete_transition(self)

    # -- callbacks -----------------------------------------------------------
    def _call(self, cb: Any, obj: KlpObject) -> Any:
        if cb is None:
            return 0
        try:
            return cb(obj.patch.ctx, obj)
        except Exception as exc:  # the module's Python is buggy: fail like -EFAULT
            return self.k.module_bug(obj.patch.name, getattr(cb, "__name__", "callback"), exc, -errno.EFAULT)

    def pre_patch_callback(self, obj: KlpObject) -> int:
        ret = self._call(obj.callbacks.pre_patch, obj) or 0
        obj.post_unpatch_enabled = ret == 0
        return ret

    def post_patch_callback(self, obj: KlpObject) -> None:
        self._call(obj.callbacks.post_patch, obj)

    def pre_unpatch_callback(self, obj: KlpObject) -> None:
        self._call(obj.callbacks.pre_unpatch, obj)

    def post_unpatch_callback(self, obj: KlpObject) -> None:
        if obj.post_unpatch_enabled:
            self._call(obj.callbacks.post_unpatch, obj)
        obj.post_unpatch_enabled = False

    # -- states (state.c) ------------------------------------------------------
    def get_prev_state(self, state_id: int) -> State | None:
        """klp_get_prev_state(): only during a transition; outside one it is
        WARN_ON_ONCE(!klp_transition_patch) (state.c:69) and NULL."""
        if self.transition_patch is None:
            warn_on_once(self.k, "kernel/livepatch/state.c:69 klp_get_prev_state+0x0/0x40")
            return None
        last = None
        for patch in self.patches:
            if patch is self.transition_patch:
                break
            last = patch.get_state(state_id) or last
        return last

    def is_patch_compatible(self, new: KlpPatch) -> bool:
        for old in self.patches:
            for state in old.states:
                mine = new.get_state(state.id)
                if mine is None:
                    if new.replace:
                        return False
                    continue
                if mine.version < state.version:
                    return False
        return True

    # -- building and initialising a patch -------------------------------------
    def _build(self, mod: "Module", decl: Patch) -> KlpPatch | int:
        patch = KlpPatch(mod=mod, replace=decl.replace, states=[attrs.evolve(s) for s in decl.states],
                         ctx=mod.ctx)
        for odecl in decl.objs:
            obj = KlpObject(odecl.name, patch, callbacks=odecl.callbacks)
            for fdecl in odecl.funcs:
                if not fdecl.old_name or fdecl.new_func is None:
                    return -errno.EINVAL
                new = self.k.symbols.add(KFunc(fdecl.new_name, mod.name, body=fdecl.new_func))
                for key_name in fdecl.static_branches:
                    key = self.k.jump_labels.key(key_name)
                    if key is not None:
                        self.k.jump_labels.add_site(new, key)
                obj.funcs.append(KlpFunc(fdecl.old_name, fdecl.old_sympos, obj, new_func=new))
            patch.objs.append(obj)
        return patch

    def _add_nops(self, patch: KlpPatch) -> None:
        for old in self.patches:
            for old_obj in old.objs:
                obj = next((o for o in patch.objs if o.name == old_obj.name), None)
                if obj is None:
                    obj = KlpObject(old_obj.name, patch, dynamic=True)
                    patch.objs.append(obj)
                for old_func in old_obj.funcs:
                    if any(self._same_target(f, old_func) for f in obj.funcs):
                        continue
                    obj.funcs.append(KlpFunc(old_func.old_name, old_func.old_sympos, obj, nop=True))

    def _same_target(self, func: KlpFunc, old: KlpFunc) -> bool:
        """klp_find_func(): old_sympos 0 and 1 match only from "livepatch: Match
        old_sympos 0 and 1 in klp_find_func()" (v6.19, backported to the
        5.10, 5.15, 6.1, 6.6, 6.12 and 6.18 stable trees, whose latest
        releases the model stands for).  Before it, a replace patch naming
        ``f,0`` over ``f,1`` gets a nop whose directory is a duplicate."""
        v = self.k.version
        if v.at_least(6, 19) or (v.major, v.minor) in {(5, 10), (5, 15), (6, 1), (6, 6), (6, 12), (6, 18)}:
            return func.same_target(old)
        return func.old_name == old.old_name and func.old_sympos == old.old_sympos

    def _kobject_add(self, patch: KlpPatch, path: str, name: str, siblings: list[str]) -> int:
        """kobject_add() of a directory ``name`` under ``path``: a name already
        there is sysfs_warn_dup() (pr_fmt "sysfs: ", dump_stack()) and then
        kobject_add_internal()'s error (pr_fmt "kobject: " from v6.4,
        "kobject: define common logging prefix"), -EEXIST."""
        if name not in siblings:
            siblings.append(name)
            return 0
        self.k.printk_task(KERN_WARNING, f"sysfs: cannot create duplicate filename '{path}/{name}'")
        frames = [f"{f}+0x0/0x40" for f in ("sysfs_warn_dup", "sysfs_create_dir_ns", "kobject_add_internal",
                                             "kobject_add", "klp_enable_patch")]
        mod = patch.mod.name if patch.mod.state.value == "coming" else None  # from the module's init
        if mod is not None:
            frames += [f"init_module+0x0/0x40 [{mod}]", "do_one_initcall+0x0/0x40", "do_init_module+0x0/0x40"]
            frames += init_module_path(self.k)[1:]
        print_dump_stack(self.k, frames, FINIT_MODULE_USER_REGS if mod is not None else None)
        prefix = "kobject: " if self.k.version.at_least(6, 4) else ""
        self.k.printk_task(KERN_ERR, f"{prefix}kobject_add_internal failed for {name} with -EEXIST, don't try to "
                                     "register things with the same name in the same directory.")
        return -errno.EEXIST

    def _init_object_loaded(self, obj: KlpObject) -> int:
        objname = obj.name or "vmlinux"
        for func in obj.funcs:
            old, ret, msg = self.k.symbols.lookup(objname, func.old_name, func.old_sympos)
            if old is None:
                self.pr(KERN_ERR, msg or "")
                return ret
            func.old_func = old
            if func.nop:
                func.new_func = old
        return 0

    def _free_object_loaded(self, obj: KlpObject) -> None:
        obj.mod = None
        for func in obj.funcs:
            func.old_func = None

    def _find_loaded_module(self, name: str) -> "Module | None":
        mod = self.k.modules.get(name)
        return mod if mod is not None and mod.klp_alive else None

    def _init_patch(self, patch: KlpPatch) -> int:
        patch.kobj_alive = True
        self.sysfs_patches.append(patch)
        if patch.replace:
            self._add_nops(patch)
        objs: list[str] = []
        for obj in patch.objs:
            if obj.is_module:
                obj.mod = self._find_loaded_module(obj.name or "")
            path = f"/kernel/livepatch/{patch.name}"
            ret = self._kobject_add(patch, path, obj.sysfs_name, objs)
            funcs: list[str] = []
            for func in obj.funcs:
                ret = ret or self._kobject_add(patch, f"{path}/{obj.sysfs_name}", func.sysfs_name, funcs)
            if ret:
                return ret
            if obj.loaded:
                ret = self._init_object_loaded(obj)
                if ret:
                    return ret
        self.patches.append(patch)
        return 0

    # -- enable ------------------------------------------------------------------
    def enable_patch(self, mod: "Module", decl: Patch) -> int:
        """klp_enable_patch(), called from a livepatch module's init."""
        if not mod.defn.livepatch:
            self.pr(KERN_ERR, f"module {mod.name} is not marked as a livepatch module")
            return -errno.EINVAL
        built = self._build(mod, decl)
        if isinstance(built, int):
            return built
        patch = built
        if not self.is_patch_compatible(patch):
            self.pr(KERN_ERR, f"Livepatch patch ({mod.name}) is not compatible with the already installed livepatches.")
            return -errno.EINVAL
        if not self.k.modules.try_module_get(mod):
            return -errno.ENODEV
        ret = self._init_patch(patch)
        if not ret:
            ret = self._enable(patch)
        if ret:
            self._free_patch_start(patch)
            self._free_patch_finish(patch)
        return ret

    def _enable(self, patch: KlpPatch) -> int:
        if self.transition_patch is not None:
            return -errno.EBUSY
        self.pr(KERN_NOTICE, f"enabling patch '{patch.name}'")
        tr.klp_init_transition(self, patch, KLP_PATCHED)
        for obj in patch.objs:
            if not obj.loaded:
                continue
            ret = self.pre_patch_callback(obj)
            if ret:
                self.pr(KERN_WARNING, f"pre-patch callback failed for object '{obj.sysfs_name}'")
                return self._enable_failed(patch, ret)
            ret = klp_patch_object(self, obj)
            if ret:
                self.pr(KERN_WARNING, f"failed to patch object '{obj.sysfs_name}'")
                return self._enable_failed(patch, ret)
        tr.klp_start_transition(self)
        patch.enabled = True
        tr.klp_try_complete_transition(self)
        return 0

    def _enable_failed(self, patch: KlpPatch, ret: int) -> int:
        self.pr(KERN_WARNING, f"failed to enable patch '{patch.name}'")
        tr.klp_cancel_transition(self)
        return ret

    # -- disable -------------------------------------------------------------------
    def _disable(self, patch: KlpPatch) -> int:
        if not patch.enabled:
            return -errno.EINVAL
        if self.transition_patch is not None:
            return -errno.EBUSY
        tr.klp_init_transition(self, patch, KLP_UNPATCHED)
        for obj in patch.objs:
            if obj.patched:
                self.pre_unpatch_callback(obj)
        tr.klp_start_transition(self)
        patch.enabled = False
        tr.klp_try_complete_transition(self)
        return 0

    # -- sysfs stores --------------------------------------------------------------
    def enabled_store(self, patch: KlpPatch, data: bytes) -> int:
        value = kstrtobool(data)
        if value is None:
            return -errno.EINVAL
        if patch.enabled == value:
            return -errno.EINVAL
        if patch is self.transition_patch:
            tr.klp_reverse_transition(self)
            return 0
        if not value:
            return self._disable(patch)
        return -errno.EINVAL

    def force_store(self, patch: KlpPatch, data: bytes) -> int:
        value = kstrtobool(data)
        if value is None:
            return -errno.EINVAL
        if not value:
            return 0
        if patch is not self.transition_patch:
            return -errno.EINVAL
        tr.klp_force_transition(self)
        return 0

    def stack_order(self, patch: KlpPatch) -> int:
        order = 0
        for p in self.patches:
            order += 1
            if p is patch:
                break
        return order

    # -- replace -----------------------------------------------------------------------
    def unpatch_replaced_patches(self, new: KlpPatch) -> None:
        for old in self.patches:
            if old is new:
                continue
            old.enabled = False
            klp_unpatch_objects(self, old)

    def discard_nops(self, patch: KlpPatch) -> None:
        klp_unpatch_objects(self, patch, nops_only=True)
        for obj in patch.objs:
            obj.funcs = [f for f in obj.funcs if not f.nop]
        patch.objs = [o for o in patch.objs if not o.dynamic]

    # -- freeing ---------------------------------------------------------------------------
    def _free_patch_start(self, patch: KlpPatch) -> None:
        if patch in self.patches:
            self.patches.remove(patch)

    def _free_patch_finish(self, patch: KlpPatch) -> None:
        if patch.kobj_alive:
            patch.kobj_alive = False
            self.sysfs_patches.remove(patch)
        for obj in patch.objs:
            for func in obj.funcs:
                if func.new_func is not None and not func.nop:
                    self.k.symbols.discard(func.new_func)
        if not patch.forced:
            self.k.modules.module_put(patch.mod)

    def free_patch_async(self, patch: KlpPatch) -> None:
        self._free_patch_start(patch)
        self.k.wq.schedule(0, "klp_free_patch_work", lambda: self._free_patch_finish(patch))

    def free_replaced_patches_async(self, new: KlpPatch) -> None:
        for old in [p for p in self.patches if p is not new]:
            self.free_patch_async(old)

    # -- late module loading -------------------------------------------------------------
    def module_coming(self, mod: "Module") -> int:
        if mod.name == "vmlinux":
            self.k.printk_task(KERN_ERR, "livepatch: vmlinux.ko: invalid module name")
            return -errno.EINVAL
        mod.klp_alive = True
        for patch in list(self.patches):
            obj = next((o for o in patch.objs if o.name == mod.name), None)
            if obj is None:
                continue
            obj.mod = mod
            ret = self._init_object_loaded(obj)
            if ret:
                self.pr(KERN_WARNING, f"failed to initialize patch '{patch.name}' for module '{mod.name}' ({ret})")
                return self._coming_failed(mod, patch, obj, ret)
            self.pr(KERN_NOTICE, f"applying patch '{patch.name}' to loading module '{mod.name}'")
            ret = self.pre_patch_callback(obj)
            if ret:
                self.pr(KERN_WARNING, f"pre-patch callback failed for object '{mod.name}'")
                return self._coming_failed(mod, patch, obj, ret)
            ret = klp_patch_object(self, obj)
            if ret:
                self.pr(KERN_WARNING, f"failed to apply patch '{patch.name}' to module '{mod.name}' ({ret})")
                self.post_unpatch_callback(obj)
                return self._coming_failed(mod, patch, obj, ret)
            if patch is not self.transition_patch:
                self.post_patch_callback(obj)
        return 0

    def _coming_failed(self, mod: "Module", patch: KlpPatch, obj: KlpObject, ret: int) -> int:
        self.pr(KERN_WARNING,
                f"patch '{patch.name}' failed for module '{mod.name}', refusing to load module '{mod.name}'")
        mod.klp_alive = False
        self._free_object_loaded(obj)
        self._cleanup_module_patches(mod, limit=patch)
        return ret

    def module_going(self, mod: "Module") -> None:
        mod.klp_alive = False
        self._cleanup_module_patches(mod, limit=None)

    def _cleanup_module_patches(self, mod: "Module", limit: KlpPatch | None) -> None:
        for patch in list(self.patches):
            if patch is limit:
                break
            obj = next((o for o in patch.objs if o.name == mod.name), None)
            if obj is None or obj.mod is None:
                continue
            if patch is not self.transition_patch:
                self.pre_unpatch_callback(obj)
            self.pr(KERN_NOTICE, f"reverting patch '{patch.name}' on unloading module '{mod.name}'")
            klp_unpatch_object(self, obj)
            self.post_unpatch_callback(obj)
            self._free_object_loaded(obj)

    # -- queries for views ------------------------------------------------------------
    def find_sysfs_patch(self, name: str) -> KlpPatch | None:
        return next((p for p in self.sysfs_patches if p.name == name), None)

    def in_transition(self) -> bool:
        return self.transition_patch is not None
