"""Dynamic ftrace, as far as livepatch rides on it.

An :class:`FtraceOps` hooks the entry call site of the functions in its filter.
When a task calls a traced function every registered ops whose filter holds it
sees the call; an IPMODIFY ops may redirect execution (that is how livepatch
swaps bodies).  Registration refuses what the kernel refuses: a PERMANENT ops
while ``ftrace_enabled`` is off, a second IPMODIFY ops on one function, a
function that has no ftrace location (notrace).
"""

from __future__ import annotations

import enum
import errno
from typing import Callable

import attrs

from .symbols import KFunc
from .tasks import Task
from .text import Text


class OpsFlag(enum.Flag):
    ENABLED = 1
    DYNAMIC = 2
    SAVE_REGS = 4
    IPMODIFY = 8
    PERMANENT = 16
    DIRECT = 32


# an ops with one of these marks every record it attaches to FTRACE_FL_MODIFIED,
# for good (enabled_functions' " M ")
MODIFIES = OpsFlag.IPMODIFY | OpsFlag.DIRECT


@attrs.define
class Regs:
    """The part of pt_regs a handler may change: where execution continues."""

    ip: KFunc


# handler(task, traced_func, regs) -> None; may set regs.ip
Handler = Callable[[Task, KFunc, Regs], None]


@attrs.define(eq=False)
class FtraceOps:
    func: Handler
    flags: OpsFlag = OpsFlag(0)
    filter: set[KFunc] = attrs.field(factory=set)
    owner: str = ""


@attrs.define
class Ftrace:
    text: Text = attrs.field(factory=Text)
    enabled: bool = True
    ops: list[FtraceOps] = attrs.field(factory=list)
    # kernel.ftrace_enabled as proc_dointvec stored it (any int; ``enabled`` is !!it)
    sysctl: int = 1
    modified: set[KFunc] = attrs.field(factory=set)  # records with FTRACE_FL_MODIFIED

    def update_call_sites(self) -> None:
        """ftrace_replace_code(): every function's entry becomes a call when
        some registered ops hooks it (and ftrace is on), a nop otherwise.
        Records an IPMODIFY or DIRECT ops attaches to stay MODIFIED (set in
        __ftrace_hash_rec_update, whether or not ftrace is on)."""
        for ops in self.ops:
            if ops.flags & MODIFIES:
                self.modified |= ops.filter
        hooked = set()
        if self.enabled:
            for ops in self.ops:
                hooked |= ops.filter
        with self.text.lock("ftrace"):
            for func in set(self.text.call_sites) | hooked:
                self.text.poke_call_site(func, "call" if func in hooked else "nop")

    def set_filter_ip(self, ops: FtraceOps, func: KFunc) -> int:
        """Add ``func`` to the filter; an IPMODIFY ops already registered may
        not take a function that another IPMODIFY ops hooks."""
        if func.notrace:
            return -errno.EINVAL
        if ops in self.ops and OpsFlag.IPMODIFY in ops.flags and any(
                o is not ops and OpsFlag.IPMODIFY in o.flags and func in o.filter for o in self.ops):
            return -errno.EBUSY
        ops.filter.add(func)
        if ops in self.ops:
            self.update_call_sites()
        return 0

    def clear_filter_ip(self, ops: FtraceOps, func: KFunc) -> None:
        ops.filter.discard(func)
        if ops in self.ops:
            self.update_call_sites()

    def register(self, ops: FtraceOps) -> int:
        if ops in self.ops:
            return -errno.EBUSY
        if not self.enabled and OpsFlag.PERMANENT in ops.flags:
            return -errno.EBUSY
        if OpsFlag.IPMODIFY in ops.flags:
            for other in self.ops:
                if OpsFlag.IPMODIFY in other.flags and other.filter & ops.filter:
                    return -errno.EBUSY
        ops.flags |= OpsFlag.ENABLED
        self.ops.append(ops)
        self.update_call_sites()
        return 0

    def unregister(self, ops: FtraceOps) -> int:
        if ops not in self.ops:
            return -errno.ENODEV
        self.ops.remove(ops)
        ops.flags &= ~OpsFlag.ENABLED
        self.update_call_sites()
        return 0

    def set_sysctl(self, value: int) -> int:
        """ftrace_enable_sysctl() after proc_dointvec stored ``value``: the
        int stays as written; only a change of !!value acts, and turning off
        under a PERMANENT ops is EBUSY with the sysctl set back to 1."""
        on = value != 0
        if on == self.enabled:
            self.sysctl = value
            return 0
        if not on and any(OpsFlag.PERMANENT in o.flags for o in self.ops):
            self.sysctl = 1
            return -errno.EBUSY
        self.sysctl = value
        self.enabled = on
        self.update_call_sites()
        return 0

    def dispatch(self, task: Task, func: KFunc) -> KFunc:
        """Run the ops hooked on ``func``'s call site; return where execution goes.

        When an IPMODIFY ops sends execution elsewhere, the new function's own
        call site runs too (a replacement function is traceable itself)."""
        regs = Regs(func)
        if not self.enabled or self.text.call_site(func) != "call":
            return func
        for ops in list(self.ops):
            if func in ops.filter:
                ops.func(task, func, regs)
        if regs.ip is not func:
            for ops in list(self.ops):
                if regs.ip in ops.filter and OpsFlag.IPMODIFY not in ops.flags:
                    ops.func(task, regs.ip, Regs(regs.ip))
        return regs.ip

    def hooked(self, func: KFunc) -> list[FtraceOps]:
        return [o for o in self.ops if func in o.filter]

