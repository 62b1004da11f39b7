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
    """A ``module_param``; ``perm`` 0 means no file under parameters/;
    ``description`` None means no ``MODULE_PARM_DESC`` (modinfo then shows
    only the type).

    ``get`` names one of the module's functions: the parameter is then a
    ``module_param_cb()`` whose ``kernel_param_ops`` has only that ``.get``.
    Reading the file calls the function (so a livepatch of it changes what
    the file shows) and shows what it returns; ``type`` and ``default`` are
    not used, and ``.modinfo`` has no parmtype for it (module_param_cb()
    emits none)."""

    name: str
    type: ParamType = "int"
    default: Any = 0
    perm: int = 0o644
    description: str | None = None
    get: str | None = None


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
    # return offsets of its call sites by callee name ("*": any), as stack
    # traces show its frame (name+0xOFFSET/0xSIZE); undeclared: a stand-in
    calls: dict[str, int] = attrs.field(factory=dict)


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
    size: int = 0x40  # of the replacement function, as for Function
    calls: dict[str, int] = attrs.field(factory=dict)

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
class Symtab:
    """Facts of the built ``.ko``'s ELF symbol table that /proc/kallsyms shows
    besides the declared functions (kernel/module/kallsyms.c).  What the
    declarations imply is derived (the parameters' ``__param_`` symbols and
    variables, ``cleanup_module``, a livepatch module's source file names and
    undefined symbols ...); this names the rest.

    ``init`` and ``exit`` are the C names of the module_init()/module_exit()
    functions (default ``<module>_init``/``<module>_exit``); ``data`` and
    ``bss`` the module's own static variables (initialised, zeroed) besides
    the parameters'; ``unique_ids`` the ``__COUNTER__`` of each
    ``__UNIQUE_ID_`` symbol by the rest of its name (``name``, ``vermagic``,
    ``license``, ``__addressable_cleanup_module`` ...), a symbol not named
    here is left out; ``undefined`` the kernel symbols the code uses besides
    ``imports``, ``__fentry__``, ``__x86_return_thunk``, ``klp_enable_patch``
    and the parameters' ``param_ops_*`` (``_printk``, ``seq_write`` ...)."""

    init: str = ""
    exit: str = ""
    data: list[str] = attrs.field(factory=list)
    bss: list[str] = attrs.field(factory=list)
    unique_ids: dict[str, int] = attrs.field(factory=dict)
    undefined: list[str] = attrs.field(factory=list)


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
    size: int | None = None  # /proc/modules' size; None: derived from the text (module_size())
    depends: list[str] = attrs.field(factory=list)
    static_keys: list[StaticKeyDef] = attrs.field(factory=list)
    # symbols the module uses from vmlinux or other modules (its undefined ELF
    # symbols); one no loaded object has fails the load: "Unknown symbol"
    imports: list[str] = attrs.field(factory=list)
    symtab: Symtab = attrs.field(factory=Symtab)


PAGE_SIZE = 4096


def module_size(defn: ModuleDef) -> int:
    """module_total_size() once init memory is freed, as lsmod and
    /sys/module/M/coresize show it: each module memory type page-aligned
    (module_memory_alloc()).  The text holds the declared functions, the
    replacement functions of a declared patch and the exit function; core
    data holds struct module, the module's data and its core symbol table --
    one page for a small module, two for a livepatch module, which keeps its
    whole symbol table (klp relocations need it); rodata one page.  6.12
    shows lp_busy_target 12288 and lp_busy 16384.  A declared ``size`` wins."""
    if defn.size is not None:
        return defn.size
    text = sum(f.size for f in defn.functions) + (0x40 if defn.exit is not None else 0)
    if isinstance(defn.patch, Patch):
        text += sum(f.size for o in defn.patch.objs for f in o.funcs)
    data = 2 if defn.livepatch else 1
    return (max(1, -(-text // PAGE_SIZE)) + data + 1) * PAGE_SIZE


def module_init_size(defn: ModuleDef) -> int:
    """The init memory types while the module is coming (init text and its
    data, a page each); do_init_module() frees them and zeroes the sizes."""
    has_init = defn.init is not None or defn.patch is not None
    return 2 * PAGE_SIZE if has_init else 0


# Sections of a module built by kbuild for x86_64 6.12 (Debian's toolchain)
# that module_sect_attrs lists (SHF_ALLOC, non-empty), in ELF order
def module_sections(defn: ModuleDef) -> list[str]:
    has_init = defn.init is not None or defn.patch is not None
    names = [".note.gnu.property", ".note.gnu.build-id", ".note.Linux", ".text"]
    names += [".init.text"] if has_init else []
    names += [".exit.text"] if defn.exit is not None else []
    names += [".call_sites", ".return_sites"]
    names += [".ibt_endbr_seal"] if defn.functions else []  # functions called only directly
    names += ["__mcount_loc", ".rodata", ".rodata.str1.8", ".rodata.str1.1"]
    names += ["__param"] if defn.params else []
    names += [".orc_header", ".orc_unwind_ip", ".orc_unwind", "__patchable_function_entries"]
    names += [".init.data"] if has_init else []
    names += [".exit.data"] if defn.exit is not None else []
    names += [".data", ".gnu.linkonce.this_module", ".bss", ".symtab", ".strtab"]
    return names


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    return (len(name).to_bytes(4, "little") + len(desc).to_bytes(4, "little") + ntype.to_bytes(4, "little")
            + pad(name) + pad(desc))


def module_notes(defn: ModuleDef, release: str) -> dict[str, bytes]:
    """The SHT_NOTE sections /sys/module/M/notes/ serves: the x86 feature
    property (IBT, SHSTK), a build id (here: of the module's name) and
    Linux's notes (the build salt, CONFIG_BUILD_SALT = the release on
    Debian, and LTO info: none).  Sizes 32, 36 and 64 as 6.12 shows them."""
    import hashlib
    prop = (0xC0000002).to_bytes(4, "little") + (4).to_bytes(4, "little") + (3).to_bytes(4, "little") + bytes(4)
    build_id = hashlib.sha1(defn.name.encode()).digest()
    salt = (release.encode() + b"\0")[:20].ljust(20, b"\0")
    linux = _note(b"Linux\0", 0x100, salt) + _note(b"Linux\0", 0x101, bytes(4))
    return {".note.gnu.property": _note(b"GNU\0", 5, prop), ".note.gnu.build-id": _note(b"GNU\0", 3, build_id),
            ".note.Linux": linux}


_IDENT_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
MODULE_NAME_LEN = 56  # MODULE_NAME_LEN - 1 usable characters
KSYM_NAME_LEN = 512


def validate(defn: ModuleDef) -> str | None:
    """What is wrong with a definition, in one line, or None.  The loader
    refuses a definition with a problem before anything of it exists."""
    if not isinstance(defn, ModuleDef):
        return f"not a ModuleDef: {type(defn).__name__}"
    if not isinstance(defn.name, str) or not defn.name or not set(defn.name) <= _IDENT_OK:
        return f"module name {defn.name!r} must be letters, digits and underscores"
    if len(defn.name) >= MODULE_NAME_LEN:
        return f"module name {defn.name!r} is longer than {MODULE_NAME_LEN - 1} characters"
    seen = set()
    for p in defn.params:
        if not isinstance(p, Param) or not p.name or not set(p.name) <= _IDENT_OK:
            return f"{defn.name}: bad parameter {p!r}"
        if p.name in seen:
            return f"{defn.name}: parameter {p.name} declared twice"
        seen.add(p.name)
        if p.type not in ("int", "uint", "bool", "charp", "int_array"):
            return f"{defn.name}: parameter {p.name} has unknown type {p.type!r}"
        if p.get is not None and not any(isinstance(f, Function) and f.name == p.get for f in defn.functions):
            return f"{defn.name}: parameter {p.name}'s get function {p.get!r} is not one of its functions"
        if p.description is not None and (not isinstance(p.description, str) or "\0" in p.description):
            return f"{defn.name}: parameter {p.name} has a bad description {p.description!r}"
        if not isinstance(p.perm, int) or not 0 <= p.perm <= 0o777 or p.perm & 0o002:
            return f"{defn.name}: parameter {p.name} has bad perm {p.perm!r} (world-writable is refused)"
    for f in defn.functions:
        if not isinstance(f, Function) or not f.name or not callable(f.body) or len(f.name) >= KSYM_NAME_LEN:
            return f"{defn.name}: bad function {f!r}"
    if not isinstance(defn.imports, list) or not all(isinstance(i, str) and i for i in defn.imports):
        return f"{defn.name}: imports must be a list of symbol names"
    if defn.size is not None and (not isinstance(defn.size, int) or defn.size < 0):
        return f"{defn.name}: size must be a byte count or None"
    if defn.patch is not None and not defn.livepatch:
        return f"{defn.name}: has a patch but livepatch=False (MODULE_INFO(livepatch, \"Y\") is missing)"
    if isinstance(defn.patch, Patch):
        return validate_patch(defn.name, defn.patch)
    if defn.patch is not None and not callable(defn.patch):
        return f"{defn.name}: patch must be a Patch or a function returning one"
    return None


def validate_patch(name: str, patch: Patch) -> str | None:
    if not isinstance(patch, Patch) or not isinstance(patch.objs, list) or not patch.objs:
        return f"{name}: a patch needs a non-empty list of objects"
    for obj in patch.objs:
        if not isinstance(obj, Object) or not isinstance(obj.funcs, list):
            return f"{name}: bad object {obj!r}"
        if obj.name is not None and (not obj.name or len(obj.name) >= MODULE_NAME_LEN):
            return f"{name}: bad object name {obj.name!r}"
        for f in obj.funcs:
            if not isinstance(f, Func) or not f.old_name or not callable(f.new_func):
                return f"{name}: bad function {f!r} in object {obj.name or 'vmlinux'}"
            if len(f.old_name) >= KSYM_NAME_LEN or not isinstance(f.old_sympos, int) or f.old_sympos < 0:
                return f"{name}: bad old_name/old_sympos in {f!r}"
    return None
