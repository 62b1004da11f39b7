"""Functions of the model machine: vmlinux and module text.

A :class:`KFunc` is the unit livepatch and ftrace reason about: it has an
object (``vmlinux`` or a module name), a position among equally named symbols
of that object (sympos), a size, and a body -- the Python callable that runs
when a task calls it.  Call stacks of tasks are lists of KFuncs, so "is this
task sleeping in that function" is an identity test, like the kernel's
address-range test.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

import attrs

VMLINUX = "vmlinux"

Body = Callable[..., Any]


def _no_body(ctx: Any, *args: Any) -> None:
    return None


@attrs.define(eq=False, repr=False)
class KFunc:
    name: str
    obj: str = VMLINUX
    body: Body = _no_body
    size: int = 0x40
    notrace: bool = False
    sympos: int = 1  # 1-based position among same-named symbols of the object
    static: bool = False  # file-local: kallsyms type 't' rather than 'T'

    def __repr__(self) -> str:
        return f"<KFunc {self.name} [{self.obj}]>"

    @property
    def traceable(self) -> bool:
        return not self.notrace


@attrs.define
class SymbolTable:
    """kallsyms: per object, the ordered list of its functions."""

    objects: dict[str, list[KFunc]] = attrs.field(factory=dict)

    def add(self, func: KFunc) -> KFunc:
        funcs = self.objects.setdefault(func.obj, [])
        func.sympos = 1 + sum(1 for f in funcs if f.name == func.name)
        funcs.append(func)
        return func

    def discard(self, func: KFunc) -> None:
        """A freed patch lets go of a replacement function.  Its code is the
        module's text, though: the symbol stays (in kallsyms, in ftrace's
        records) until the module itself is freed (:meth:`remove_object`).
        Only vmlinux code declared at run time is dropped here."""
        funcs = self.objects.get(func.obj, [])
        if func.obj == VMLINUX and func in funcs:
            funcs.remove(func)

    def remove_object(self, obj: str) -> None:
        self.objects.pop(obj, None)

    def functions(self, obj: str) -> list[KFunc]:
        return list(self.objects.get(obj, []))

    def find(self, obj: str, name: str) -> list[KFunc]:
        return [f for f in self.objects.get(obj, []) if f.name == name]

    def lookup(self, obj: str, name: str, sympos: int) -> tuple[KFunc | None, int, str | None]:
        """klp_find_object_symbol(): (func, 0, None) or (None, -errno, message)."""
        matches = self.find(obj, name)
        if not matches:
            return None, -errno.EINVAL, f"symbol '{name}' not found in symbol table"
        if sympos == 0:
            if len(matches) > 1:
                objname = "(null)" if obj == VMLINUX else obj
                return None, -errno.EINVAL, (
                    f"unresolvable ambiguity for symbol '{name}' in object '{objname}'")
            return matches[0], 0, None
        if sympos > len(matches):
            return None, -errno.EINVAL, (
                f"symbol position {sympos} for symbol '{name}' in object '{obj}' not found")
        return matches[sympos - 1], 0, None
