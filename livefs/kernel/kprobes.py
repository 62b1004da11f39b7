"""Kprobes on ftrace sites, as far as they meet livepatch.

A kprobe on a traceable function rides on one of two shared ftrace ops: the
plain one, or -- when the probe has a post_handler -- the IPMODIFY one.  Only
one IPMODIFY user may hook a function, so a post_handler kprobe and a
livepatch exclude each other, whichever came first.  The debugfs switch
arms and disarms every probe.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from .ftrace import FtraceOps, OpsFlag
from .printk import KERN_INFO, KERN_WARNING
from .symbols import KFunc

if TYPE_CHECKING:
    from .kernel import Kernel

PR_FMT = "kprobes: "  # kernel/kprobes.c's pr_fmt


@attrs.define(eq=False)
class Kprobe:
    symbol: str
    post_handler: bool = False
    func: KFunc | None = None
    armed: bool = False
    hits: int = 0


@attrs.define(eq=False)
class Kprobes:
    k: "Kernel"
    enabled: bool = True
    probes: list[Kprobe] = attrs.field(factory=list)
    ftrace_ops: FtraceOps = attrs.field(init=False)
    ipmodify_ops: FtraceOps = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.ftrace_ops = FtraceOps(func=self._hit, flags=OpsFlag.SAVE_REGS, owner="kprobe_ftrace_ops")
        self.ipmodify_ops = FtraceOps(func=self._hit, flags=OpsFlag.SAVE_REGS | OpsFlag.IPMODIFY,
                                      owner="kprobe_ipmodify_ops")

    def _hit(self, task, func, regs) -> None:
        for kp in self.probes:
            if kp.armed and kp.func is func:
                kp.hits += 1

    def _ops(self, kp: Kprobe) -> FtraceOps:
        return self.ipmodify_ops if kp.post_handler else self.ftrace_ops

    def _arm(self, kp: Kprobe) -> int:
        assert kp.func is not None
        if kp.func.notrace:
            kp.armed = True  # a breakpoint, not an ftrace site: nothing to share
            return 0
        ops = self._ops(kp)
        ftrace = self.k.ftrace
        ret = ftrace.set_filter_ip(ops, kp.func)
        if not ret and ops not in ftrace.ops:
            ret = ftrace.register(ops)
            if ret:
                ftrace.clear_filter_ip(ops, kp.func)
        if not ret:
            kp.armed = True
        return ret

    def _disarm(self, kp: Kprobe) -> None:
        if not kp.armed:
            return
        kp.armed = False
        if kp.func is None or kp.func.notrace:
            return
        ops = self._ops(kp)
        if not any(p.armed and p.func is kp.func and self._ops(p) is ops for p in self.probes):
            self.k.ftrace.clear_filter_ip(ops, kp.func)
        if not ops.filter:
            self.k.ftrace.unregister(ops)

    def register(self, kp: Kprobe) -> int:
        funcs = [f for fs in self.k.symbols.objects.values() for f in fs if f.name == kp.symbol]
        if not funcs:
            return -errno.ENOENT
        kp.func = funcs[0]
        if self.enabled:
            ret = self._arm(kp)
            if ret:
                return ret
        self.probes.append(kp)
        return 0

    def unregister(self, kp: Kprobe) -> None:
        if kp in self.probes:
            self._disarm(kp)
            self.probes.remove(kp)

    def set_enabled(self, on: bool) -> int:
        """arm_all_kprobes() / disarm_all_kprobes(): every probe on a
        best-effort basis.  Arming that fails for some probes still leaves
        kprobes globally enabled; the last error is the write's and a warning
        counts the failures (pr_fmt "kprobes: ")."""
        if on == self.enabled:
            return 0
        self.enabled = on
        if not on:
            for kp in self.probes:
                self._disarm(kp)
            self.k.printk_task(KERN_INFO, f"{PR_FMT}Kprobes globally disabled")
            return 0
        ret = errors = 0
        for kp in self.probes:
            if err := self._arm(kp):
                errors += 1
                ret = err
        if errors:
            self.k.printk_task(KERN_WARNING, f"{PR_FMT}Kprobes globally enabled, but failed to enable {errors} out "
                               f"of {len(self.probes)} probes. Please check which kprobes are kept disabled via "
                               "debugfs.")
        else:
            self.k.printk_task(KERN_INFO, f"{PR_FMT}Kprobes globally enabled")
        return ret
