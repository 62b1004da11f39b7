"""test_klp_kprobe: a kprobe on cmdline_proc_show, with or without a post_handler."""

from __future__ import annotations

from livefs.kernel.kprobes import Kprobe
from livefs.kernel.moddef import ModuleDef, Param

from .api import ModuleContext


def _init(ctx: ModuleContext) -> int:
    kp = Kprobe("cmdline_proc_show", post_handler=bool(ctx.param("has_post_handler")))
    ctx.data["kprobe"] = kp
    return ctx.kernel.kprobes.register(kp)


def _exit(ctx: ModuleContext) -> None:
    ctx.kernel.kprobes.unregister(ctx.data["kprobe"])


test_klp_kprobe = ModuleDef(
    name="test_klp_kprobe",
    description="Livepatch test: kprobe function",
    author="Michael Vetter <mvetter@suse.com>",
    params=[Param("has_post_handler", "bool", True, 0o444, "Whether the kprobe has a post_handler")],
    init=_init,
    exit=_exit,
)

MODULES = [test_klp_kprobe]
