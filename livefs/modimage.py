"""The ``.ko`` stand-in: a genuine ELF64 relocatable object, like a kernel module.

Its ``.modinfo`` holds ``key=value`` strings (name, license, depends, vermagic,
livepatch, parm, parmtype ...), its ``.gnu.linkonce.this_module`` a ``struct
module`` with the name at offset 0x18, and a ``.livefs`` section carries what
the mock loads: a catalog entry's name, or the Python source of a module
definition.  So kmod's ``modinfo`` and binutils' ``readelf`` read it as they read
a real module, and init_module() in the mock reads it back.

Standard library only: the module-tool shims import this file directly.
"""

from __future__ import annotations

import struct

ELFMAG = b"\x7fELF"
ET_REL, EM_X86_64 = 1, 62
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 0, 1, 2, 3
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_LOCAL, STB_GLOBAL = 0, 1
STT_OBJECT, STT_FUNC, STT_SECTION = 1, 2, 3
THIS_MODULE_SIZE = 0x500
THIS_MODULE_NAME_OFFSET = 0x18
MODULE_NAME_LEN = 56
PAYLOAD_MAGIC = b"livefs-module 2\n"


class ImageError(ValueError):
    """Not a stand-in this loader can read: init_module fails with ENOEXEC."""


def _strtab(names: list[str]) -> tuple[bytes, dict[str, int]]:
    blob, offsets = bytearray(b"\0"), {"": 0}
    for name in names:
        if name not in offsets:
            offsets[name] = len(blob)
            blob += name.encode() + b"\0"
    return bytes(blob), offsets


def build(name: str, modinfo: list[tuple[str, str]], payload: bytes) -> bytes:
    """An ELF relocatable object for module ``name``."""
    if len(name.encode()) >= MODULE_NAME_LEN:
        raise ImageError(f"module name too long: {name}")
    text = b"\xc3"  # ret: init_module and cleanup_module share it
    modinfo_blob = b"".join(f"{k}={v}".encode() + b"\0" for k, v in modinfo)
    this_module = bytearray(THIS_MODULE_SIZE)
    this_module[THIS_MODULE_NAME_OFFSET:THIS_MODULE_NAME_OFFSET + len(name)] = name.encode()
    strtab, stroff = _strtab(["init_module", "cleanup_module", "__this_module"])
    # sections: 0 null, 1 .text, 2 .modinfo, 3 .gnu.linkonce.this_module, 4 .livefs, 5 .symtab, 6 .strtab, 7 .shstrtab
    symbols = [
        (0, 0, 0, 0, 0, 0),
        (0, (STB_LOCAL << 4) | STT_SECTION, 0, 1, 0, 0),
        (0, (STB_LOCAL << 4) | STT_SECTION, 0, 3, 0, 0),
        (stroff["init_module"], (STB_GLOBAL << 4) | STT_FUNC, 0, 1, 0, len(text)),
        (stroff["cleanup_module"], (STB_GLOBAL << 4) | STT_FUNC, 0, 1, 0, len(text)),
        (stroff["__this_module"], (STB_GLOBAL << 4) | STT_OBJECT, 0, 3, 0, THIS_MODULE_SIZE),
    ]
    symtab = b"".join(struct.pack("<IBBHQQ", *s) for s in symbols)
    shnames = [".text", ".modinfo", ".gnu.linkonce.this_module", ".livefs", ".symtab", ".strtab", ".shstrtab"]
    shstrtab, shoff_names = _strtab(shnames)
    contents = [text, modinfo_blob, bytes(this_module), payload, symtab, strtab, shstrtab]
    aligns = [16, 8, 64, 1, 8, 1, 1]
    out = bytearray(64)
    offsets = []
    for blob, align in zip(contents, aligns):
        out += b"\0" * (-len(out) % align)
        offsets.append(len(out))
        out += blob
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    headers = [struct.pack("<IIQQQQIIQQ", 0, SHT_NULL, 0, 0, 0, 0, 0, 0, 0, 0)]
    specs = [
        (SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, 0, 0, 0),
        (SHT_PROGBITS, SHF_ALLOC, 0, 0, 0),
        (SHT_PROGBITS, SHF_WRITE | SHF_ALLOC, 0, 0, 0),
        (SHT_PROGBITS, 0, 0, 0, 0),
        (SHT_SYMTAB, 0, 6, 3, 24),  # link .strtab, first global symbol is #3
        (SHT_STRTAB, 0, 0, 0, 0),
        (SHT_STRTAB, 0, 0, 0, 0),
    ]
    for i, (sh_type, flags, link, info, entsize) in enumerate(specs):
        headers.append(struct.pack("<IIQQQQIIQQ", shoff_names[shnames[i]], sh_type, flags, 0, offsets[i],
                                   len(contents[i]), link, info, aligns[i], entsize))
    out += b"".join(headers)
    header = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", ELFMAG, 2, 1, 1, 0, 0, b"\0" * 7, ET_REL, EM_X86_64, 1,
                         0, 0, shoff, 0, 64, 0, 0, 64, len(headers), len(headers) - 1)
    out[:64] = header
    return bytes(out)


def sections(data: bytes) -> dict[str, bytes]:
    """Section name -> contents of an ELF64 little-endian object."""
    try:
        if data[:4] != ELFMAG or data[4] != 2 or data[5] != 1:
            raise ImageError("not an ELF64 little-endian object")
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if shentsize != 64 or not 0 < shnum < 4096 or shstrndx >= shnum:
            raise ImageError("bad section header table")
        raw = []
        for i in range(shnum):
            name, sh_type, _, _, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * 64)
            if sh_type != 8 and off + size > len(data):  # SHT_NOBITS has no bytes
                raise ImageError("section beyond the end of the file")
            raw.append((name, sh_type, off, size))
        names = raw[shstrndx]
        strtab = data[names[2]:names[2] + names[3]]
        out = {}
        for name, sh_type, off, size in raw[1:]:
            end = strtab.find(b"\0", name)
            out[strtab[name:end].decode("utf-8", "replace")] = b"" if sh_type == 8 else data[off:off + size]
        return out
    except struct.error:
        raise ImageError("truncated ELF object") from None


def modinfo(data: bytes) -> list[tuple[str, str]]:
    blob = sections(data).get(".modinfo")
    if blob is None:
        raise ImageError("no .modinfo section")
    out = []
    for item in blob.split(b"\0"):
        if item:
            key, _, value = item.decode("utf-8", "replace").partition("=")
            out.append((key, value))
    return out


def payload(data: bytes) -> tuple[dict[str, str], bytes]:
    """The ``.livefs`` section: its header fields and the body after them."""
    blob = sections(data).get(".livefs")
    if blob is None or not blob.startswith(PAYLOAD_MAGIC):
        raise ImageError("not a livefs module stand-in (no .livefs section)")
    head, sep, body = blob[len(PAYLOAD_MAGIC):].partition(b"\n\n")
    if not sep:
        raise ImageError("malformed .livefs section")
    fields = {}
    for line in head.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if not eq:
            raise ImageError("malformed .livefs section")
        fields[key] = value
    return fields, body


def make_payload(fields: dict[str, str], body: bytes = b"") -> bytes:
    return PAYLOAD_MAGIC + "".join(f"{k}={v}\n" for k, v in fields.items()).encode() + b"\n" + body
