"""Module parameters (kernel/params.c): parsing and the sysfs view of values."""

from __future__ import annotations

import errno
import re
from typing import Any

import attrs

from .moddef import Param

INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
UINT_MAX = (1 << 32) - 1
ULLONG_MAX = (1 << 64) - 1
_KSTRTOX = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", re.ASCII)


def _kstrtoull(t: str) -> int:
    """_kstrtoull(s, 0): an optional '+', digits in base 0 and an optional
    newline; the value, or -EINVAL for anything else (blanks, underscores, a
    '-'), -ERANGE past ULLONG_MAX."""
    t = t[:-1] if t.endswith("\n") else t
    t = t[1:] if t.startswith("+") else t
    m = _KSTRTOX.fullmatch(t)
    if m is None:
        return -errno.EINVAL
    digits = m.group(1)
    if digits[:2].lower() == "0x":
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits[1:], 8)
    else:
        value = int(digits, 10)
    return value if value <= ULLONG_MAX else -errno.ERANGE


def kstrtox(text: str, signed: bool, bits: int = 32) -> tuple[int, int]:
    """kstrtoint()/kstrtouint() (base 0): ``(value, 0)`` or ``(0, -errno)``:
    -EINVAL for what is not a number, -ERANGE for a number that does not fit
    (lib/kstrtox.c; kstrtoll() parses a leading '-' itself, kstrtoull() never)."""
    negative = signed and text.startswith("-")
    value = _kstrtoull(text[1:] if negative else text)
    if value < 0:
        return 0, value
    if negative:
        value = -value
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        return 0, -errno.ERANGE
    return value, 0


def parse_kernel_int(text: str) -> int | None:
    """kstrtoint(.., 0, ..): decimal, 0x hex or 0 octal, optional sign and
    newline; nothing else -- no blanks, no underscores, no sign after the
    prefix (Python's int() would take all three).  None for any error."""
    value, err = kstrtox(text, signed=True)
    return None if err else value


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
        """param_set_*(): store ``text``; 0 or a negative errno (-EINVAL, or
        -ERANGE for a number that does not fit the type), value untouched on error."""
        if self.decl.get is not None:
            # ops with no .set: parse_one() would call a NULL pointer (an
            # oops in the kernel); the model refuses the value instead
            return -errno.EINVAL
        kind = self.decl.type
        if kind == "bool":
            b = parse_bool(text)
            if b is None:
                return -errno.EINVAL
            self.value = b
        elif kind in ("int", "uint"):
            v, err = kstrtox(text, signed=kind == "int")
            if err:
                return err
            self.value = v
        elif kind == "int_array":
            # param_array(): each element through param_set_int, the first error wins
            items = []
            for x in text.rstrip("\n").split(","):
                v, err = kstrtox(x, signed=True)
                if err:
                    return err
                items.append(v)
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
