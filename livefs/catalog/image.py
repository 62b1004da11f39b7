"""Module stand-ins (``.ko`` files): writing them, and what the loader makes
of them.

A stand-in is an ELF object (:mod:`livefs.modimage`).  Its ``.livefs`` section
names a catalog module, or carries the Python source of a user's module
definition; init_module() in the mock turns either back into a
:class:`ModuleDef`, as the kernel turns an ELF image into a module.
"""

from __future__ import annotations

import errno
from pathlib import Path

from livefs import modimage
from livefs.kernel.moddef import ModuleDef, Patch, validate

from . import catalog, find

_PARMTYPE = {"int": "int", "uint": "uint", "bool": "bool", "charp": "charp", "int_array": "array of int"}


class BuildError(Exception):
    """A module file that cannot become a stand-in; the message is one line."""


def modinfo_fields(defn: ModuleDef, release: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    if defn.livepatch:
        fields.append(("livepatch", "Y"))
    if defn.author:
        fields.append(("author", defn.author))
    if defn.description:
        fields.append(("description", defn.description))
    fields.append(("license", defn.license))
    # the compiler emits .modinfo strings in reverse order of their
    # definition: the last parameter first, its MODULE_PARM_DESC before the
    # parmtype of its module_param(); kmod prints them reversed again
    for p in reversed(defn.params):
        if p.description is not None:
            fields.append(("parm", f"{p.name}:{p.description}"))
        if p.get is None:  # module_param_cb() has no __MODULE_PARM_TYPE
            fields.append(("parmtype", f"{p.name}:{_PARMTYPE[p.type]}"))
    fields.append(("depends", ",".join(defn.depends)))
    fields.append(("name", defn.name))
    fields.append(("retpoline", "Y"))
    fields.append(("vermagic", f"{release} SMP preempt mod_unload modversions "))
    return fields


def render_catalog(defn: ModuleDef, release: str) -> bytes:
    return modimage.build(defn.name, modinfo_fields(defn, release),
                          modimage.make_payload({"catalog": defn.name}))


def load_source(source: str, filename: str) -> dict[str, ModuleDef]:
    """Run a module file and collect the ModuleDefs it defines, by name."""
    namespace: dict = {"__name__": "livefs_module_file", "__file__": filename}
    try:
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - module code runs like insmod'ed code
    except Exception as exc:
        raise BuildError(f"{filename}: {type(exc).__name__}: {exc}") from None
    found = {}
    for value in namespace.values():
        if isinstance(value, ModuleDef):
            found[value.name] = value
    return found


def pick(defs: dict[str, ModuleDef], filename: str, name: str | None) -> ModuleDef:
    if name is not None:
        if name not in defs:
            raise BuildError(f"{filename}: no module named {name!r} (it defines: {', '.join(sorted(defs)) or 'none'})")
        return defs[name]
    if len(defs) != 1:
        raise BuildError(f"{filename}: defines {len(defs)} modules ({', '.join(sorted(defs)) or 'none'}); "
                         "choose one with --name")
    return next(iter(defs.values()))


def build_from_source(path: Path, release: str, name: str | None = None) -> tuple[ModuleDef, bytes]:
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    defn = pick(load_source(source, path.name), path.name, name)
    problem = validate(defn) or _jump_label_problem(defn)
    if problem is not None:
        raise BuildError(f"{path.name}: {problem}")
    payload = modimage.make_payload({"source": "python", "file": path.name, "module": defn.name},
                                    source.encode())
    return defn, modimage.build(defn.name, modinfo_fields(defn, release), payload)


def _jump_label_problem(defn: ModuleDef) -> str | None:
    """kpatch-build's rule (5.8+ kernels): a livepatch's jump labels may use
    vmlinux keys or its own, never a key defined in another module."""
    if not defn.livepatch or not isinstance(defn.patch, Patch):
        return None
    from livefs.kernel.kernel import Kernel
    vmlinux_keys = set(Kernel(ncpus=1).jump_labels.keys)
    own = {k.name for k in defn.static_keys}
    for obj in defn.patch.objs:
        for func in obj.funcs:
            for key in func.static_branches:
                if key not in own and key not in vmlinux_keys:
                    return (f"Found a jump label at {func.new_name}()+0x0, using key {key}, which is defined in a "
                            "module.  Use static_key_enabled() instead.")
    return None


def resolve(data: bytes) -> tuple[ModuleDef | None, int, str | None]:
    """init_module(): the definition an image stands for, or (None, -errno, why)."""
    try:
        fields, body = modimage.payload(data)
        name = dict(modimage.modinfo(data)).get("name")
    except modimage.ImageError as exc:
        return None, -errno.ENOEXEC, str(exc)
    if "catalog" in fields:
        defn = find(fields["catalog"])
        if defn is None or defn.name != name:
            return None, -errno.ENOEXEC, f"unknown catalog module {fields['catalog']!r}"
        return defn, 0, None
    if fields.get("source") == "python":
        try:
            defs = load_source(body.decode("utf-8"), fields.get("file", "module.py"))
            defn = pick(defs, fields.get("file", "module.py"), fields.get("module"))
        except (BuildError, UnicodeDecodeError) as exc:
            return None, -errno.ENOEXEC, str(exc)
        if defn.name != name:
            return None, -errno.ENOEXEC, f".modinfo names {name!r} but the source defines {defn.name!r}"
        return defn, 0, None
    return None, -errno.ENOEXEC, "the .livefs section carries nothing loadable"


def export(directory: Path, release: str, names: list[str] | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, defn in catalog().items():
        if names and name not in names:
            continue
        path = directory / f"{name}.ko"
        path.write_bytes(render_catalog(defn, release))
        written.append(path)
    return written


CALL_GETPID = """#!/bin/bash
# livefs stand-in for the selftests' test_klp-call_getpid: loop on getpid().
# Each iteration is a real syscall into the mock (a read of its getpid file),
# so this process switches at its own kernel exit, like the C helper.
f=${LIVEFS_ROOT:-/}/sys/kernel/debug/livefs/getpid
while read -r _ < "$f"; do :; done
exit 1
"""


def export_helpers(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "test_klp-call_getpid"
    path.write_text(CALL_GETPID)
    path.chmod(0o755)
    return [path]
