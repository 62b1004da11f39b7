"""Module stand-ins (``.ko`` files) and how the loader reads them.

A stand-in carries a module's name, the catalog entry it stands for and its
modinfo fields.  ``livefs modules export`` writes them; the ``insmod`` shim
hands the bytes to the mock, which parses them here, as the kernel parses an
ELF image in init_module().
"""

from __future__ import annotations

import errno
from pathlib import Path

import attrs

from livefs.kernel.moddef import ModuleDef

from . import find

MAGIC = "livefs-module 1"
_PARMTYPE = {"int": "int", "uint": "uint", "bool": "bool", "charp": "charp", "int_array": "array of int"}


@attrs.define
class Image:
    name: str
    catalog: str
    modinfo: list[tuple[str, str]]


def modinfo_fields(defn: ModuleDef, release: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    if defn.livepatch:
        fields.append(("livepatch", "Y"))
    if defn.author:
        fields.append(("author", defn.author))
    if defn.description:
        fields.append(("description", defn.description))
    fields.append(("license", defn.license))
    for p in defn.params:
        fields.append(("parm", f"{p.name}:{p.description}"))
        fields.append(("parmtype", f"{p.name}:{_PARMTYPE[p.type]}"))
    fields.append(("depends", ",".join(defn.depends)))
    fields.append(("retpoline", "Y"))
    fields.append(("name", defn.name))
    fields.append(("vermagic", f"{release} SMP preempt mod_unload modversions "))
    return fields


def render(defn: ModuleDef, release: str) -> bytes:
    lines = [MAGIC, f"name={defn.name}", f"catalog={defn.name}"]
    lines += [f"modinfo.{k}={v}" for k, v in modinfo_fields(defn, release)]
    return ("\n".join(lines) + "\n").encode()


def parse(data: bytes) -> Image | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    if not lines or lines[0] != MAGIC:
        return None
    values: dict[str, str] = {}
    modinfo: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        key, eq, value = line.partition("=")
        if not eq:
            return None
        if key.startswith("modinfo."):
            modinfo.append((key[len("modinfo."):], value))
        else:
            values[key] = value
    if "name" not in values or "catalog" not in values:
        return None
    return Image(values["name"], values["catalog"], modinfo)


def resolve(data: bytes) -> tuple[ModuleDef | None, int]:
    """The definition an image stands for, or (None, -errno) as init_module fails."""
    image = parse(data)
    if image is None:
        return None, -errno.ENOEXEC
    defn = find(image.catalog)
    if defn is None or defn.name != image.name:
        return None, -errno.ENOEXEC
    return defn, 0


def export(directory: Path, release: str, names: list[str] | None = None) -> list[Path]:
    from . import catalog
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, defn in catalog().items():
        if names and name not in names:
            continue
        path = directory / f"{name}.ko"
        path.write_bytes(render(defn, release))
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
