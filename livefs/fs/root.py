"""The whole tree a mount serves: sys/, proc/, dev/."""

from __future__ import annotations

from typing import Iterable

from .debugfs import debug_dir
from .devfs import dev_dir
from .hostproc import HostProc
from .procfs import proc_dir
from .sysfs import kernel_object_dirs, livepatch_dir, module_dir
from .tracefs import tracing_dir
from .tree import Dir, Node, Request


def build_root(mountpoint: str | None = None) -> Dir:
    """The tree; ``mountpoint`` (absolute) enables ``overlay/``, the /proc that
    ``livefs run`` lays over the real one (its symlinks need absolute targets)."""
    livepatch = livepatch_dir()
    tracing = tracing_dir()
    debug = debug_dir(tracing)

    def sys_kernel(req: Request) -> Iterable[tuple[str, Node]]:
        yield "debug", debug
        yield "livepatch", livepatch
        yield "tracing", tracing
        yield from kernel_object_dirs(req)

    kernel = Dir(entries=sys_kernel)
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
