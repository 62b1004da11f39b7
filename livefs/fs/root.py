"""The whole tree a mount serves: sys/, proc/, dev/."""

from __future__ import annotations

import os
from typing import Iterable

from .debugfs import debug_dir
from .devfs import dev_dir
from .hostproc import HostProc, host_entries
from .procfs import proc_dir
from .sysfs import kernel_object_dirs, livepatch_dir, module_dir
from .tracefs import tracing_dir
from .tree import Dir, Node, Request


# set by ``livefs run`` for the daemon it starts: the host directory whose
# entries sys/kernel serves beside the mock's
HOST_SYS_KERNEL_ENV = "LIVEFS_HOST_SYS_KERNEL"


def build_root(mountpoint: str | None = None, host_sys_kernel: str | None = None) -> Dir:
    """The tree; ``mountpoint`` (absolute) enables ``overlay/``, the /proc that
    ``livefs run`` lays over the real one (its symlinks need absolute targets).
    ``host_sys_kernel`` (or, for a mount, ``$LIVEFS_HOST_SYS_KERNEL``) adds
    that host directory's entries (``mm``, ``security``, ...) to sys/kernel
    beside the mock's, read-only: ``livefs run`` lays sys/kernel over the real
    /sys/kernel, which its daemon still sees.  A mount of its own leaves the
    real /sys/kernel in view and shows only the mock's."""
    livepatch = livepatch_dir()
    tracing = tracing_dir()
    debug = debug_dir(tracing)
    if host_sys_kernel is None and mountpoint is not None:
        host_sys_kernel = os.environ.get(HOST_SYS_KERNEL_ENV) or None

    own: dict[str, Node] = {"debug": debug, "livepatch": livepatch, "tracing": tracing}

    def sys_kernel(req: Request) -> Iterable[tuple[str, Node]]:
        mine = dict(own)
        mine.update(kernel_object_dirs(req))
        yield from mine.items()
        if host_sys_kernel is not None:
            yield from host_entries(host_sys_kernel, mine)

    kernel = Dir(entries=sys_kernel, child=lambda req, name: own.get(name))
    module = module_dir()
    sys_dir = Dir(entries=lambda req: [("kernel", kernel), ("module", module)])
    proc = proc_dir()
    dev = dev_dir()
    top: list[tuple[str, Node]] = [("dev", dev), ("proc", proc), ("sys", sys_dir)]
    if mountpoint is not None:
        hostproc = f"{mountpoint.rstrip('/')}/overlay/hostproc"
        overlay = Dir(perm=0o555, entries=lambda req, d=Dir(perm=0o555), p=HostProc(proc, hostproc).build():
                      [("hostproc", d), ("proc", p)])
        top.insert(1, ("overlay", overlay))
    return Dir(entries=lambda req: top)
