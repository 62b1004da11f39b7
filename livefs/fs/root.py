"""The whole tree a mount serves: sys/, proc/, dev/."""

from __future__ import annotations

from typing import Iterable

from .debugfs import debug_dir
from .devfs import dev_dir
from .procfs import proc_dir
from .sysfs import kernel_object_dirs, livepatch_dir, module_dir
from .tracefs import tracing_dir
from .tree import Dir, Node, Request


def build_root() -> Dir:
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
    return Dir(entries=lambda req: [("dev", dev), ("proc", proc), ("sys", sys_dir)])
