"""tracefs (/sys/kernel/tracing, also at /sys/kernel/debug/tracing) and the
kprobes debugfs switch."""

from __future__ import annotations

import errno
import re

from livefs.kernel.ftrace import OpsFlag
from livefs.kernel.params import parse_bool

from .tree import Attr, Dir, Request


KSTRTOUL_FROM_USER_MAX = 23  # kstrtoul_from_user() copies this much of the write
_DECIMAL = re.compile(rb"\+?([0-9]+)\n?")


def kstrtoul_base10(data: bytes) -> int:
    """kstrtoul_from_user(buf, count, 10, &val): an optional '+', decimal digits
    (no 0x, no sign, no blanks) and an optional newline, of the first 23 bytes;
    the value, -EINVAL or -ERANGE (past ULONG_MAX)."""
    m = _DECIMAL.fullmatch(data[:KSTRTOUL_FROM_USER_MAX])
    if m is None:
        return -errno.EINVAL
    value = int(m.group(1))
    return value if value < 1 << 64 else -errno.ERANGE


def _tracing_on_store(req: Request, data: bytes) -> int:
    """rb_simple_write(): any non-zero number turns the buffer on."""
    value = kstrtoul_base10(data)
    if value < 0:
        return value
    req.kernel.tracer.tracing_on = value != 0
    return 0


def _tracer_store(req: Request, data: bytes) -> int:
    return req.kernel.tracer.set_tracer(data.decode("utf-8", "replace").strip())


def _filter_show(req: Request) -> str:
    funcs = req.kernel.tracer.filter
    if not funcs:
        return "#### all functions enabled ####\n"
    return "".join(f"{f.name}\n" if f.obj == "vmlinux" else f"{f.name} [{f.obj}]\n" for f in funcs)


def _filter_store(req: Request, data: bytes) -> int:
    names = data.decode("utf-8", "replace").split()
    if not names:
        return 0
    return req.kernel.tracer.set_filter(names, append=True)


def _available(req: Request) -> str:
    out = []
    for obj, funcs in req.kernel.symbols.objects.items():
        for f in funcs:
            if f.traceable:
                out.append(f.name if obj == "vmlinux" else f"{f.name} [{obj}]")
    return "\n".join(out) + "\n"


def _enabled_functions(req: Request) -> str:
    """One line per hooked record, in the 6.12 x86-64 shape (ftrace.c t_show):
    name, ref count, flag columns R, I, D, O, then M for a record an IPMODIFY
    or DIRECT ops ever touched (FTRACE_FL_MODIFIED), then the trampoline and
    callback."""
    lines = []
    tramp = 0xFFFFFFFFC03A0000
    for obj, funcs in req.kernel.symbols.objects.items():
        for f in funcs:
            hooked = req.kernel.ftrace.hooked(f)
            if not hooked:
                continue
            regs = " R" if any(OpsFlag.SAVE_REGS in o.flags for o in hooked) else "  "
            ipmod = " I" if any(OpsFlag.IPMODIFY in o.flags for o in hooked) else "  "
            direct = " D" if any(OpsFlag.DIRECT in o.flags for o in hooked) else "  "
            modified = " M " if f in req.kernel.ftrace.modified else "   "
            name = f.name if obj == "vmlinux" else f"{f.name} [{obj}]"
            line = f"{name} ({len(hooked)}){regs}{ipmod}{direct}  {modified}"
            if len(hooked) == 1:
                handler = _handler_name(hooked[0])
                line += f"\ttramp: 0x{tramp:x} ({handler}+0x0/0x100) ->{handler}+0x0/0x100"
                tramp += 0x1000
            else:
                line += " ->ftrace_ops_list_func+0x0/0x200"
            lines.append(line)
    return "".join(line + "\n" for line in lines)


def _handler_name(ops) -> str:
    return {"livepatch": "klp_ftrace_handler", "function": "function_trace_call",
            "kprobe_ftrace_ops": "kprobe_ftrace_handler",
            "kprobe_ipmodify_ops": "kprobe_ftrace_handler"}.get(ops.owner, "ftrace_stub")


def _clear_trace(req: Request) -> None:
    req.kernel.tracer.buffer.clear()


def tracing_dir() -> Dir:
    def entries(req: Request):
        t = req.kernel.tracer
        yield "available_filter_functions", Attr(st_size=0, show=_available)
        yield "available_tracers", Attr(st_size=0, show=lambda r: "function nop\n")
        yield "current_tracer", Attr(perm=0o644, st_size=0, show=lambda r: f"{t.current}\n", store=_tracer_store)
        yield "enabled_functions", Attr(st_size=0, show=_enabled_functions)
        yield "set_ftrace_filter", Attr(perm=0o644, st_size=0, show=_filter_show, store=_filter_store,
                                        truncate=lambda r: t.clear_filter())
        yield "trace", Attr(perm=0o644, st_size=0, show=lambda r: t.render(), store=lambda r, d: 0,
                            truncate=_clear_trace)
        yield "tracing_on", Attr(perm=0o644, st_size=0, show=lambda r: f"{int(t.tracing_on)}\n",
                                 store=_tracing_on_store)
    return Dir(perm=0o700, entries=entries)


def _kprobes_store(req: Request, data: bytes) -> int:
    """write_enabled_file_bool(): kstrtobool_from_user, then arm or disarm
    every probe; an arming error is the write's."""
    value = parse_bool(data.decode("utf-8", "replace"))
    if value is None:
        return -errno.EINVAL
    return req.kernel.kprobes.set_enabled(value)


def kprobes_dir() -> Dir:
    return Dir(perm=0o755, entries=lambda req: [
        ("enabled", Attr(perm=0o600, st_size=0, show=lambda r: f"{int(r.kernel.kprobes.enabled)}\n",
                         store=_kprobes_store, empty_writes=True)),
    ])
