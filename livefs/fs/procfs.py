"""/proc views: per-task directories, cmdline, meminfo, the sysctls we own."""

from __future__ import annotations

import errno
import re
from typing import Iterable

from livefs.kernel.modules import ModuleState
from livefs.kernel.panic import add_taint_mask
from livefs.kernel.tasks import Task

from .hostproc import host_euid
from .tree import Attr, Dir, Node, Request, Symlink

TASK_COMM_LEN = 16

_DOINTVEC = re.compile(rb"\s*(-?\d+)\s*\Z")


def parse_dointvec(data: bytes) -> int | None:
    """proc_dointvec() for a single value: optional whitespace around one integer."""
    m = _DOINTVEC.match(data)
    return int(m.group(1)) if m else None


def _task_dir(task: Task) -> Dir:
    def stack(req: Request) -> str:
        if not req.capable:  # proc_pid_stack() wants CAP_SYS_ADMIN, whoever owns the file
            raise OSError(errno.EACCES, "stack")
        return "".join(f"[<0>] {f.name}+0x0/0x{f.size:x}{'' if f.obj == 'vmlinux' else f' [{f.obj}]'}\n"
                       for f in reversed(task.stack))

    def comm_write(req: Request, data: bytes) -> int:
        """comm_write(): a process may rename its own threads only; the name is
        the first TASK_COMM_LEN - 1 bytes, up to a NUL, newline and all."""
        if req.kernel.tasks.get(task.pid) is not task:
            return -errno.ESRCH
        if req.task.tgid != task.tgid:
            return -errno.EINVAL
        task.comm = data[:TASK_COMM_LEN - 1].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return 0

    def owner(req: Request) -> int:  # procfs: the process's files are its own
        return host_euid(task.pid)

    files: list[tuple[str, Node]] = [
        ("comm", Attr(perm=0o644, st_size=0, show=lambda req: f"{task.comm}\n", store=comm_write, owner=owner)),
        ("patch_state", Attr(perm=0o400, st_size=0, show=lambda req: f"{task.patch_state}\n", owner=owner)),
        ("stack", Attr(perm=0o400, st_size=0, show=stack, owner=owner)),
    ]
    thread = Dir(perm=0o555, entries=lambda req: files)  # model tasks are single-threaded
    tasks = Dir(perm=0o555, entries=lambda req: [(str(task.pid), thread)])
    return Dir(perm=0o555, entries=lambda req: files + [("task", tasks)])


def _lookup_pid(req: Request, name: str) -> Node | None:
    if not name.isdigit():
        return None
    task = req.kernel.tasks.get(int(name))
    return _task_dir(task) if task is not None else None


_DOULONG = re.compile(rb"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?:\s.*)?\Z", re.DOTALL)


def parse_doulong(data: bytes) -> int | None:
    """proc_doulongvec_minmax() for a single value: C's strtoul with base 0,
    ended by whitespace or the end; a sign or anything else is EINVAL."""
    m = _DOULONG.match(data)
    if m is None:
        return None
    digits = m.group(1)
    base = 16 if digits[:2] in (b"0x", b"0X") else 8 if digits.startswith(b"0") else 10
    value = int(digits, base)
    return value if value < 1 << 64 else None


def _tainted_store(req: Request, data: bytes) -> int:
    """proc_taint(): CAP_SYS_ADMIN only, and taint is never cleared."""
    if not req.capable:
        return -errno.EPERM
    value = parse_doulong(data)
    if value is None:
        return -errno.EINVAL
    add_taint_mask(req.kernel, value)
    return 0


def _proc_modules(req: Request) -> str:
    # kallsyms_show_value(): addresses for the privileged, zeros for others
    return "".join(mod.proc_modules_line(show_address=req.capable) + "\n"
                   for mod in reversed(list(req.kernel.modules.modules.values()))
                   if mod.state is not ModuleState.UNFORMED)


def _ftrace_enabled_store(req: Request, data: bytes) -> int:
    value = parse_dointvec(data)
    if value is None:
        return -errno.EINVAL
    return req.kernel.ftrace.set_sysctl(value)


def proc_dir() -> Dir:
    sys_kernel = Dir(perm=0o555, entries=lambda req: [
        ("ftrace_enabled", Attr(perm=0o644, st_size=0, show=lambda r: f"{int(r.kernel.ftrace.enabled)}\n",
                                store=_ftrace_enabled_store)),
        ("tainted", Attr(perm=0o644, st_size=0, show=lambda r: f"{r.kernel.modules.tainted}\n",
                         store=_tainted_store)),
    ])
    sys_dir = Dir(perm=0o555, entries=lambda req: [("kernel", sys_kernel)])

    def entries(req: Request) -> Iterable[tuple[str, Node]]:
        k = req.kernel
        yield "cmdline", Attr(st_size=0, show=lambda r: k.call(r.task, "vmlinux", "cmdline_proc_show"))
        yield "meminfo", Attr(st_size=0, show=lambda r: k.call(r.task, "vmlinux", "meminfo_proc_show"))
        yield "version", Attr(st_size=0, show=lambda r: k.call(r.task, "vmlinux", "version_proc_show"))
        yield "kallsyms", Attr(st_size=0, show=lambda r: r.kernel.kallsyms())
        yield "modules", Attr(st_size=0, show=_proc_modules)
        yield "self", Symlink(target=lambda r: str(r.task.tgid))
        yield "sys", sys_dir
        for name, (_, mode, show) in list(k.proc_entries.items()):
            yield name, Attr(perm=mode, st_size=0,
                             show=lambda r, f=show: r.kernel.call(r.task, f.obj, f.name))
        for task in sorted(k.tasks.tasks.values(), key=lambda t: t.pid):
            if task.pid == task.tgid:
                yield str(task.pid), _task_dir(task)

    return Dir(perm=0o555, entries=entries, hidden=_lookup_pid)
