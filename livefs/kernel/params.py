"""Module parameters (kernel/params.c): parsing and the sysfs view of values."""

from __future__ import annotations

import errno
import re
from typing import Any

import attrs

from .moddef import Param

INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
_KSTRTOINT = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", re.ASCII)


def parse_kernel_int(text: str) -> int | None:
    """kstrtoint(.., 0, ..): decimal, 0x hex or 0 octal, optional sign and
    newline; nothing else -- no blanks, no underscores, no sign after the
    prefix (Python's int() would take all three)."""
    t = text[:-1] if text.endswith("\n") else text
    m = _KSTRTOINT.fullmatch(t)
    if m is None:
        return None
    sign, digits = (-1 if m.group(1) == "-" else 1), m.group(2)
    if digits[:2].lower() == "0x":
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits[1:], 8)
    else:
        value = int(digits, 10)
    value *= sign
    return value if INT_MIN <= value <= INT_MAX else None


def parse_bool(text: str) -> bool | None:
    """kstrtobool(): the first character decides; an empty value is EINVAL
    (a bare ``flag`` with no ``=`` is handed in as "1" by the loader)."""
    t = text
    if t == "":
        return None
    c = t[0]
    if c in "yY1tT":
        return True
    if c in "nN0fF":
        return False
    if t[:2].lower() == "on":
        return True
    if t[:2].lower() == "of":
        return False
    return None


@attrs.define
class ParamValue:
    decl: Param
    value: Any

    def parse(self, text: str) -> int:
        """param_set_*(): store ``text``; 0 or -EINVAL, value untouched on error."""
        kind = self.decl.type
        if kind == "bool":
            b = parse_bool(text)
            if b is None:
                return -errno.EINVAL
            self.value = b
        elif kind in ("int", "uint"):
            v = parse_kernel_int(text)
            if v is None or (kind == "uint" and v < 0):
                return -errno.EINVAL
            self.value = v
        elif kind == "int_array":
            items = [parse_kernel_int(x) for x in text.rstrip("\n").split(",")]
            if any(v is None for v in items):
                return -errno.EINVAL
            self.value = items
        else:
            self.value = text.rstrip("\n")
        return 0

    def show(self) -> str:
        kind = self.decl.type
        if kind == "bool":
            return "Y\n" if self.value else "N\n"
        if kind == "int_array":
            return ",".join(str(v) for v in self.value) + "\n"
        return f"{self.value}\n"


def split_args(args: str) -> list[tuple[str, str | None]]:
    """parse_args(): ``name[=value]`` words, double quotes group a value."""
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(args)
    while i < n:
        while i < n and args[i].isspace():
            i += 1
        if i >= n:
            break
        word = []
        in_quote = False
        while i < n and (in_quote or not args[i].isspace()):
            if args[i] == '"':
                in_quote = not in_quote
            else:
                word.append(args[i])
            i += 1
        text = "".join(word)
        name, eq, value = text.partition("=")
        out.append((name.replace("-", "_"), value if eq else None))
    return out
