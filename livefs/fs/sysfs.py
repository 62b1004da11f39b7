"""/sys views: kernel/livepatch, module/<name>, and module-created kernel dirs."""

from __future__ import annotations

from typing import Iterable

from livefs.kernel.livepatch import KlpObject, KlpPatch
from livefs.kernel.modules import Module

from .tree import Attr, Dir, FixedDir, Node, Request, per_object


def _int_attr(fn, perm: int = 0o444) -> Attr:
    return Attr(perm=perm, show=lambda req: f"{int(fn(req))}\n")


def _func_dirs(obj: KlpObject) -> Iterable[tuple[str, Node]]:
    for func in obj.funcs:
        yield func.sysfs_name, Dir()


@per_object
def _object_dir(obj: KlpObject) -> Dir:
    def entries(req: Request) -> Iterable[tuple[str, Node]]:
        if req.kernel.version.has_object_patched:
            yield "patched", _int_attr(lambda r: obj.patched)
        yield from _func_dirs(obj)
    return FixedDir(entries=entries)


@per_object
def _patch_dir(patch: KlpPatch) -> Dir:
    def entries(req: Request) -> Iterable[tuple[str, Node]]:
        k = req.kernel
        lp = k.livepatch
        yield "enabled", Attr(perm=0o644, show=lambda r: f"{int(patch.enabled)}\n",
                              store=lambda r, data: lp.enabled_store(patch, data))
        yield "transition", _int_attr(lambda r: patch is lp.transition_patch)
        yield "force", Attr(perm=0o200, store=lambda r, data: lp.force_store(patch, data))
        if k.version.has_replace_attr:
            yield "replace", _int_attr(lambda r: patch.replace)
        if k.version.has_stack_order:
            yield "stack_order", _int_attr(lambda r: lp.stack_order(patch))
        for obj in patch.objs:
            yield obj.sysfs_name, _object_dir(obj)
    return FixedDir(entries=entries)


def livepatch_dir() -> Dir:
    def child(req: Request, name: str) -> Node | None:
        patch = next((p for p in req.kernel.livepatch.sysfs_patches if p.name == name), None)
        return None if patch is None else _patch_dir(patch)
    return Dir(entries=lambda req: [(p.name, _patch_dir(p)) for p in req.kernel.livepatch.sysfs_patches],
               child=child)


def _param_attr(mod: Module, name: str, perm: int) -> Attr:
    writable = perm & 0o222
    get = mod.params[name].decl.get

    def show(req: Request) -> str:
        if get is not None:  # module_param_cb(): param_attr_show() calls ops->get
            return req.kernel.call(req.task, mod.name, get)
        return mod.params[name].show()
    return Attr(perm=perm, show=show,
                store=(lambda req, data: req.kernel.modules.param_store(mod, name, data)) if writable else None)


@per_object
def _module_dir(mod: Module) -> Dir:
    def entries(req: Request) -> Iterable[tuple[str, Node]]:
        # kernel/module/sysfs.c and main.c (modinfo_attrs): the directories,
        # then the attributes; a module without MODULE_VERSION has no version
        # or srcversion (Debian's 6.12 has no CONFIG_MODULE_SRCVERSION_ALL)
        yield "coresize", Attr(show=lambda r: f"{mod.coresize}\n")
        yield "holders", Dir()
        yield "initsize", Attr(show=lambda r: f"{mod.initsize}\n")
        yield "initstate", Attr(show=lambda r: f"{mod.state.value}\n")
        yield "notes", _notes_dir(mod)
        visible = [(n, pv.decl.perm) for n, pv in mod.params.items() if pv.decl.perm]
        if visible:
            yield "parameters", Dir(entries=lambda r: [(n, _param_attr(mod, n, p)) for n, p in visible])
        yield "refcnt", Attr(show=lambda r: f"{mod.refcnt}\n")
        yield "sections", _sections_dir(mod)
        yield "taint", Attr(show=lambda r: f"{mod.taint_letters}\n")
        yield "uevent", Attr(perm=0o200, store=lambda r, data: r.kernel.modules.synth_uevent(mod, data))
    return Dir(entries=entries)


MODULE_SECT_READ_SIZE = 3 + 2 * 8  # "0x" + 16 hex digits + "\n"


def _sections_dir(mod: Module) -> Dir:
    """module_sect_attrs: 0400 binary attributes, the section's address
    for a reader kallsyms_show_value() lets see it, zeros for others."""
    def entries(req: Request) -> Iterable[tuple[str, Node]]:
        for name, addr in mod.sections().items():
            yield name, Attr(perm=0o400, st_size=MODULE_SECT_READ_SIZE,
                             show=lambda r, a=addr: f"0x{a if r.capable else 0:016x}\n")
    return Dir(entries=entries)


def _notes_dir(mod: Module) -> Dir:
    """module_notes_attrs: each SHT_NOTE section as a 0444 binary attribute of its size."""
    def entries(req: Request) -> Iterable[tuple[str, Node]]:
        for name, data in mod.notes(req.kernel.utsname.release).items():
            yield name, Attr(perm=0o444, st_size=len(data), show=lambda r, d=data: d)
    return Dir(entries=entries)


def module_dir() -> Dir:
    def child(req: Request, name: str) -> Node | None:
        mod = req.kernel.modules.modules.get(name)
        return None if mod is None else _module_dir(mod)
    return Dir(entries=lambda req: [(m.name, _module_dir(m)) for m in req.kernel.modules.modules.values()],
               child=child)


def kernel_object_dirs(req: Request) -> Iterable[tuple[str, Node]]:
    """Directories that modules hang under /sys/kernel (kernel_kobj)."""
    for name, (_, files) in list(req.kernel.kernel_dirs.items()):
        yield name, Dir(entries=lambda r, files=files: [
            (fname, Attr(perm=perm, show=lambda r2, show=show: show())) for fname, (perm, show) in files.items()])
