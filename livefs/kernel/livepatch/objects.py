"""Runtime livepatch records: the model's klp_patch / klp_object / klp_func.

They are built from the module's declarations (``moddef``) when the module
calls ``klp_enable_patch`` and carry the state the kernel keeps in the structs
(``patched``, ``transition``, ``enabled``, ``forced`` …).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..moddef import Callbacks, State
from ..symbols import VMLINUX, KFunc

if TYPE_CHECKING:
    from ..modules import Module


@attrs.define(eq=False, repr=False)
class KlpFunc:
    old_name: str
    old_sympos: int
    obj: "KlpObject"
    new_func: KFunc | None = None
    nop: bool = False
    old_func: KFunc | None = None
    patched: bool = False
    transition: bool = False

    def __repr__(self) -> str:
        return f"<KlpFunc {self.sysfs_name} of {self.obj.patch.name}>"

    @property
    def sysfs_name(self) -> str:
        return f"{self.old_name},{self.old_sympos or 1}"

    def same_target(self, other: "KlpFunc") -> bool:
        """klp_find_func()'s match: sympos 0 and 1 name the same symbol."""
        return self.old_name == other.old_name and (
            self.old_sympos == other.old_sympos or {self.old_sympos, other.old_sympos} == {0, 1})


@attrs.define(eq=False, repr=False)
class KlpObject:
    name: str | None  # None: vmlinux
    patch: "KlpPatch"
    funcs: list[KlpFunc] = attrs.field(factory=list)
    callbacks: Callbacks = attrs.field(factory=Callbacks)
    dynamic: bool = False
    mod: "Module | None" = None
    patched: bool = False
    post_unpatch_enabled: bool = False

    def __repr__(self) -> str:
        return f"<KlpObject {self.sysfs_name} of {self.patch.name}>"

    @property
    def sysfs_name(self) -> str:
        return self.name or VMLINUX

    @property
    def is_module(self) -> bool:
        return self.name is not None

    @property
    def loaded(self) -> bool:
        return self.name is None or self.mod is not None


@attrs.define(eq=False, repr=False)
class KlpPatch:
    mod: "Module"
    objs: list[KlpObject] = attrs.field(factory=list)
    replace: bool = False
    states: list[State] = attrs.field(factory=list)
    enabled: bool = False
    forced: bool = False
    kobj_alive: bool = False
    ctx: Any = None

    def __repr__(self) -> str:
        return f"<KlpPatch {self.name}>"

    @property
    def name(self) -> str:
        return self.mod.name

    def funcs(self):
        for obj in self.objs:
            yield from obj.funcs

    def get_state(self, state_id: int) -> State | None:
        return next((s for s in self.states if s.id == state_id), None)
