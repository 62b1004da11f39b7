"""test_klp_shadow_vars: exercises the shadow variable API from its init.

Pointers are printed as ``PTR<n>`` ids handed out in first-seen order (NULL
first), in the order the C module's argument evaluation sees them.
"""

from __future__ import annotations

from typing import Any

import attrs

from livefs.kernel.livepatch.shadow import ShadowData
from livefs.kernel.moddef import ModuleDef

from .api import ModuleContext

SV_ID1, SV_ID2 = 0x1234, 0x1235
NUM_OBJS = 3
PTR_SIZE = 8


@attrs.define(eq=False)
class Cell:
    """A C variable whose address the module passes around."""

    value: Any = None


class PtrIds:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}

    def __call__(self, ptr: Any) -> int:
        key = 0 if ptr is None else id(ptr)
        if key not in self.ids:
            self.ids[key] = len(self.ids)
        return self.ids[key]


def _init(ctx: ModuleContext) -> int:
    shadow = ctx.kernel.shadow
    ptr_id = PtrIds()
    say = ctx.pr_info

    def shadow_ctor(obj: Any, data: ShadowData, var: Cell | None) -> int:
        if var is None:
            return -22
        data.value = var.value
        say(f"shadow_ctor: PTR{ptr_id(data)} -> PTR{ptr_id(var.value)}")
        return 0

    def shadow_dtor(obj: Any, data: ShadowData) -> None:
        say(f"shadow_dtor(obj=PTR{ptr_id(obj)}, shadow_data=PTR{ptr_id(data)})")

    def get(obj: Any, id_: int):
        sv = shadow.get(obj, id_)
        say(f"klp_shadow_get(obj=PTR{ptr_id(obj)}, id=0x{id_:x}) = PTR{ptr_id(sv)}")
        return sv

    def alloc(fn: str, obj: Any, id_: int, var: Cell):
        sv = getattr(shadow, fn)(obj, id_, PTR_SIZE, shadow_ctor, var)
        say(f"klp_shadow_{fn}(obj=PTR{ptr_id(obj)}, id=0x{id_:x}, size={PTR_SIZE:x}, gfp_flags=GFP_KERNEL), "
            f"ctor=PTR{ptr_id(shadow_ctor)}, ctor_data=PTR{ptr_id(var.value)} = PTR{ptr_id(sv)}")
        return sv

    def free(obj: Any, id_: int) -> None:
        shadow.free(obj, id_, shadow_dtor)
        say(f"klp_shadow_free(obj=PTR{ptr_id(obj)}, id=0x{id_:x}, dtor=PTR{ptr_id(shadow_dtor)})")

    def expect(sv: ShadowData | None, mine: ShadowData, field: Any) -> None:
        if sv is mine and mine.value is field:
            say(f"  got expected PTR{ptr_id(mine)} -> PTR{ptr_id(mine.value)} result")

    objs = [Cell() for _ in range(NUM_OBJS)]
    nfields1 = [Cell() for _ in range(NUM_OBJS)]
    nfields2 = [Cell() for _ in range(NUM_OBJS)]
    sv1: list[Any] = [None] * NUM_OBJS
    sv2: list[Any] = [None] * NUM_OBJS
    ptr_id(None)
    if get(objs[0], SV_ID1) is None:
        say("  got expected NULL result")
    for i in range(NUM_OBJS):  # pass 1: allocate a pair for every object
        ptr_id(nfields1[i])
        sv1[i] = alloc("alloc" if i % 2 else "get_or_alloc", objs[i], SV_ID1, Cell(nfields1[i]))
        ptr_id(nfields2[i])
        sv2[i] = alloc("alloc", objs[i], SV_ID2, Cell(nfields2[i]))
        if sv1[i] is None or sv2[i] is None:
            return _fail(shadow)
    for i in range(NUM_OBJS):  # pass 2: find them again
        for sv, field, id_ in ((sv1[i], nfields1[i], SV_ID1), (sv2[i], nfields2[i], SV_ID2)):
            found = get(objs[i], id_)
            if found is None:
                return _fail(shadow)
            expect(found, sv, field)
    for i in range(NUM_OBJS):  # pass 3: get_or_alloc returns what exists
        ptr_id(nfields1[i])
        found = alloc("get_or_alloc", objs[i], SV_ID1, Cell(nfields1[i]))
        if found is None:
            return _fail(shadow)
        expect(found, sv1[i], nfields1[i])
    for i in range(NUM_OBJS):  # pass 4: free the first of each pair
        free(objs[i], SV_ID1)
        if get(objs[i], SV_ID1) is None:
            say("  got expected NULL result")
    for i in range(NUM_OBJS):  # pass 5: the second ones are still there
        found = get(objs[i], SV_ID2)
        if found is None:
            return _fail(shadow)
        expect(found, sv2[i], nfields2[i])
    shadow.free_all(SV_ID2, None)  # pass 6
    say(f"klp_shadow_free_all(id=0x{SV_ID2:x}, dtor=PTR{ptr_id(None)})")
    for i in range(NUM_OBJS):
        if get(objs[i], SV_ID2) is None:
            say("  got expected NULL result")
    return 0


def _fail(shadow) -> int:
    shadow.free_all(SV_ID1, None)
    shadow.free_all(SV_ID2, None)
    return -22


test_klp_shadow_vars = ModuleDef(
    name="test_klp_shadow_vars",
    description="Livepatch test: shadow variables",
    author="Joe Lawrence <joe.lawrence@redhat.com>",
    init=_init,
    exit=lambda ctx: None,
)

MODULES = [test_klp_shadow_vars]
