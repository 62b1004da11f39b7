"""/sys/kernel/debug: dynamic_debug/control, and livefs/ -- the mock's own
control files that the module-tool shims use (clearly outside the kernel's
paths)."""

from __future__ import annotations

import errno

import attrs

from livefs.catalog import catalog, image

from livefs.kernel.livepatch.status import render_status, status_json, transitions_json

from . import staging
from .tracefs import kprobes_dir
from .hostproc import host_process_info
from .tree import Attr, Dir, Request, Stream

# the syscalls livefs run's supervisor can make on a process's behalf, with
# the vmlinux function a livepatch patches for each
SYSCALL_FUNCS = {"getpid": "__x64_sys_getpid"}


def _control_store(req: Request, data: bytes) -> int:
    return req.kernel.dyndbg.exec_queries(data.decode("utf-8", "replace"), req.kernel.version)


def _root_only(req: Request) -> int:
    return 0 if req.capable else -errno.EPERM


def _init_module(req: Request, data: bytes) -> int:
    """``<length>\\n<args>\\0<image>`` (gathered): init_module(2) with the stand-in's bytes.  Only
    root may load modules (CAP_SYS_MODULE): the carried code runs with the
    daemon's rights."""
    if (ret := _root_only(req)) < 0:
        return ret
    args, sep, blob = data.partition(b"\0")
    if not sep:
        return -errno.EINVAL
    defn, err, why = image.resolve(blob)
    if defn is None:
        req.kernel.modules.last_error = why
        return err
    return req.kernel.load_module(defn, args.decode("utf-8", "replace"))


def _delete_module(req: Request, data: bytes) -> int:
    if (ret := _root_only(req)) < 0:
        return ret
    name = data.decode("utf-8", "replace").strip().replace("-", "_")
    return req.kernel.delete_module(name)


@attrs.define(eq=False)
class SyscallHandle:
    """``livefs/syscall``: write "NAME PID", read the return value.  livefs
    run's supervisor makes a syscall a livepatch patches (getpid) here on
    behalf of process PID, which enters and leaves the model's kernel as that
    task (and so switches on its way out, as on a real kernel)."""

    result: bytes = b""

    def write(self, req: Request, data: bytes) -> int:
        if not req.capable:
            return -errno.EPERM
        words = data.decode("ascii", "replace").split()
        if len(words) != 2 or words[0] not in SYSCALL_FUNCS or not words[1].isdigit():
            return -errno.EINVAL
        k, pid = req.kernel, int(words[1])
        task = k.tasks.get(pid) or k.task_for(pid, *host_process_info(pid))
        with k.syscall(task):
            value = k.call(task, "vmlinux", SYSCALL_FUNCS[words[0]])
        self.result = f"{value}\n".encode()
        return len(data)

    def read(self, req: Request, size: int, offset: int) -> bytes:
        return self.result[offset:offset + size]


def _patched_syscalls(req: Request) -> str:
    """The syscalls (of SYSCALL_FUNCS) some livepatch replaces: those livefs run routes to the model."""
    patched = {f.old_name for p in req.kernel.livepatch.sysfs_patches for o in p.objs if o.name is None
               for f in o.funcs}
    return "".join(f"{name}\n" for name, func in SYSCALL_FUNCS.items() if func in patched)


def _clear_store(req: Request, data: bytes) -> int:
    req.kernel.printk.clear_seq = req.kernel.printk.next_seq
    return 0


def _reboot_store(req: Request, data: bytes) -> int:
    """Mock-only: after this request the mount serves a freshly booted model."""
    if data.strip() != b"1":
        return -errno.EINVAL
    req.kernel.reboot_requested = True
    return 0


def debug_dir(tracing: Dir) -> Dir:
    dyndbg = Dir(entries=lambda req: [
        ("control", Attr(perm=0o644, st_size=0, show=lambda r: r.kernel.dyndbg.control_text(r.kernel.version),
                         store=_control_store, store_max=1 << 20)),
    ])
    livefs = Dir(perm=0o755, entries=lambda req: [
        ("init_module", Attr(perm=0o222, st_size=0, store=_init_module, store_max=1 << 28,
                             gathered=True, gate=_root_only)),
        ("delete_module", Attr(perm=0o222, st_size=0, store=_delete_module)),
        ("kmsg_clear_seq", Attr(perm=0o644, st_size=0, show=lambda r: f"{r.kernel.printk.clear_seq}\n",
                                store=_clear_store)),
        # what syslog(2) reads (livefs run answers the command's syslog calls
        # from it): the records since the last clear, each ended by a NUL
        ("syslog", Attr(perm=0o400, st_size=0,
                        show=lambda r: "".join(f"{t}\0" for t in r.kernel.printk.syslog_texts()))),
        ("catalog", Attr(perm=0o444, st_size=0, show=lambda r: "".join(f"{n}\n" for n in catalog()))),
        ("getpid", Attr(perm=0o444, st_size=0,
                        show=lambda r: f"{r.kernel.call(r.task, 'vmlinux', SYSCALL_FUNCS['getpid'])}\n")),
        ("static_keys", Attr(perm=0o444, st_size=0, show=lambda r: r.kernel.jump_labels.render())),
        ("syscall", Stream(perm=0o600, opener=lambda r, flags: SyscallHandle())),
        ("syscalls_patched", Attr(perm=0o444, st_size=0, show=_patched_syscalls)),
        ("tasks", Attr(perm=0o600, st_size=0, show=staging.show, store=staging.store)),
        ("transition", Attr(perm=0o444, st_size=0, show=lambda r: render_status(r.kernel))),
        ("status.json", Attr(perm=0o444, st_size=0, show=lambda r: status_json(r.kernel))),
        ("transitions.json", Attr(perm=0o444, st_size=0, show=lambda r: transitions_json(r.kernel))),
        ("reboot", Attr(perm=0o200, st_size=0, store=_reboot_store)),
        ("last_error", Attr(perm=0o444, st_size=0, show=lambda r: f"{r.kernel.modules.last_error or ''}\n")),
        ("release", Attr(perm=0o444, st_size=0, show=lambda r: f"{r.kernel.version.release}\n")),
    ])
    kprobes = kprobes_dir()
    return Dir(perm=0o700, entries=lambda req: [("dynamic_debug", dyndbg), ("kprobes", kprobes),
                                                  ("livefs", livefs), ("tracing", tracing)])
