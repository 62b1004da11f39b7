"""What a module *is*: the declarations a loaded module is made from.

These attrs classes mirror ``struct klp_patch`` / ``klp_object`` / ``klp_func``,
``klp_callbacks``, ``klp_state`` and ``module_param``.  They are plain data: the
kernel model loads a :class:`ModuleDef` the way the module loader loads a
``.ko``, and the catalog (and users) write them.  They live in the kernel
package because the loader consumes them; ``livefs.catalog.api`` is their public
face.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Union

import attrs

ParamType = Literal["int", "uint", "bool", "charp", "int_array"]


@attrs.define
class Param:
    """A ``module_param``; ``perm`` 0 means no file under parameters/."""

    name: str
    type: ParamType = "int"
    default: Any = 0
    perm: int = 0o644
    description: str = ""


@attrs.define
class Function:
    """Code a module (or vmlinux) provides: a symbol with a Python body.

    The body is called as ``body(call, *args)`` where ``call`` is a
    :class:`livefs.kernel.kernel.CallContext`.  ``notrace`` functions have no
    ftrace call site and cannot be livepatched.
    """

    name: str
    body: Callable[..., Any]
    notrace: bool = False
    size: int = 0x40
    static_branches: list[str] = attrs.field(factory=list)  # keys its body tests


@attrs.define
class Func:
    """A ``klp_func``: replace ``old_name`` (at ``old_sympos``) by ``new_func``.

    ``new_name`` is the symbol name of the replacement (``livepatch_…`` in the
    upstream modules); it is what traces and stacks show.
    """

    old_name: str
    new_func: Callable[..., Any]
    new_name: str = ""
    old_sympos: int = 0
    static_branches: list[str] = attrs.field(factory=list)  # keys the replacement tests

    def __attrs_post_init__(self) -> None:
        if not self.new_name:
            self.new_name = f"livepatch_{self.old_name}"


Callback = Callable[..., Any]


@attrs.define
class StaticKeyDef:
    """DEFINE_STATIC_KEY_TRUE/FALSE(name) in a module."""

    name: str
    default: bool = False


@attrs.define
class Callbacks:
    """Per-object callbacks, called as ``cb(module_ctx, klp_object)``.

    ``pre_patch`` returns 0 or a negative errno (any non-zero value fails).
    """

    pre_patch: Callback | None = None
    post_patch: Callback | None = None
    pre_unpatch: Callback | None = None
    post_unpatch: Callback | None = None


@attrs.define
class Object:
    """A ``klp_object``: ``name`` None means vmlinux."""

    name: str | None = None
    funcs: list[Func] = attrs.field(factory=list)
    callbacks: Callbacks = attrs.field(factory=Callbacks)


@attrs.define
class State:
    """A ``klp_state``: system state id/version with module-owned ``data``."""

    id: int
    version: int = 1
    data: Any = None


@attrs.define
class Patch:
    objs: list[Object] = attrs.field(factory=list)
    replace: bool = False
    states: list[State] = attrs.field(factory=list)


PatchFactory = Callable[[Any], Patch]


@attrs.define
class ModuleDef:
    """A loadable module.

    For a livepatch module give ``patch`` (a :class:`Patch`, or a function of the
    module context that builds one, so parameters such as ``replace`` can shape
    it); the default ``init`` then calls ``klp_enable_patch`` like every
    upstream livepatch module.  ``init(ctx)`` returns 0 or a negative errno;
    ``exit(ctx)`` returns nothing.
    """

    name: str
    description: str = ""
    license: str = "GPL"
    author: str = ""
    livepatch: bool = False
    params: list[Param] = attrs.field(factory=list)
    functions: list[Function] = attrs.field(factory=list)
    patch: Union[Patch, PatchFactory, None] = None
    init: Callable[[Any], int] | None = None
    exit: Callable[[Any], None] | None = None
    out_of_tree: bool = True
    signed: bool = False
    size: int = 16384
    depends: list[str] = attrs.field(factory=list)
    static_keys: list[StaticKeyDef] = attrs.field(factory=list)
