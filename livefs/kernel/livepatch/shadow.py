"""Shadow variables (kernel/livepatch/shadow.c): data attached to any object.

Objects are Python objects (identity is the address); shadow data is a
:class:`ShadowData` box that constructors fill.  Duplicates warn with the
kernel's WARN text and fail; constructor failures log and fail; get_or_alloc
never warns and never constructs twice.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable

import attrs

from ..printk import KERN_ERR

if TYPE_CHECKING:
    from ..kernel import Kernel


@attrs.define(eq=False)
class ShadowData:
    """``size`` zeroed bytes, modelled as one value slot."""

    size: int
    value: Any = None


Ctor = Callable[[Any, ShadowData, Any], int]
Dtor = Callable[[Any, ShadowData], None]


def hashed_pointer(obj: Any) -> str:
    """What ``%p`` prints: a stable per-object hash, never the address."""
    digest = hashlib.blake2b(str(id(obj)).encode(), digest_size=4).hexdigest()
    return f"00000000{digest}"


@attrs.define(eq=False)
class ShadowTable:
    k: "Kernel"
    vars: dict[tuple[int, int], tuple[Any, ShadowData]] = attrs.field(factory=dict)

    def get(self, obj: Any, id_: int) -> ShadowData | None:
        entry = self.vars.get((id(obj), id_))
        return entry[1] if entry else None

    def _alloc(self, obj: Any, id_: int, size: int, ctor: Ctor | None, ctor_data: Any,
               warn_on_exist: bool) -> ShadowData | None:
        existing = self.get(obj, id_)
        if existing is not None:
            if warn_on_exist:
                self.k.warn(f"Duplicate shadow variable <{hashed_pointer(obj)}, {id_:x}>")
                return None
            return existing
        data = ShadowData(size)
        if ctor is not None:
            ret = ctor(obj, data, ctor_data)
            if ret:
                self.k.printk_task(KERN_ERR, f"livepatch: Failed to construct shadow variable "
                                             f"<{hashed_pointer(obj)}, {id_:x}> ({ret})")
                return None
        self.vars[(id(obj), id_)] = (obj, data)
        return data

    def alloc(self, obj: Any, id_: int, size: int, ctor: Ctor | None = None, ctor_data: Any = None):
        return self._alloc(obj, id_, size, ctor, ctor_data, warn_on_exist=True)

    def get_or_alloc(self, obj: Any, id_: int, size: int, ctor: Ctor | None = None, ctor_data: Any = None):
        return self._alloc(obj, id_, size, ctor, ctor_data, warn_on_exist=False)

    def free(self, obj: Any, id_: int, dtor: Dtor | None = None) -> None:
        entry = self.vars.pop((id(obj), id_), None)
        if entry is not None and dtor is not None:
            dtor(entry[0], entry[1])

    def free_all(self, id_: int, dtor: Dtor | None = None) -> None:
        for key in [key for key in self.vars if key[1] == id_]:
            obj, data = self.vars.pop(key)
            if dtor is not None:
                dtor(obj, data)

