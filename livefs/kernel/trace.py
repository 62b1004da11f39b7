"""The function tracer (kernel/trace/trace_functions.c), as tracefs drives it.

When ``current_tracer`` is ``function`` a non-IPMODIFY ftrace ops hooks the
functions of ``set_ftrace_filter`` (all traceable ones when the filter is
empty) and records each call a task makes, with the caller, into the ring
buffer that ``trace`` shows -- but only while ``tracing_on`` is 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .ftrace import FtraceOps, OpsFlag, Regs
from .symbols import KFunc
from .tasks import Task

if TYPE_CHECKING:
    from .kernel import Kernel

TRACERS = ("function", "nop")


@attrs.define(eq=False)
class TraceEntry:
    ts_ns: int
    comm: str
    pid: int
    cpu: int
    func: str
    parent: str


@attrs.define(eq=False)
class FunctionTracer:
    k: "Kernel"
    tracing_on: bool = True
    current: str = "nop"
    filter: list[KFunc] = attrs.field(factory=list)
    buffer: list[TraceEntry] = attrs.field(factory=list)
    ops: FtraceOps | None = None

    def set_tracer(self, name: str) -> int:
        import errno
        if name not in TRACERS:
            return -errno.EINVAL
        if name == self.current:
            return 0
        if self.ops is not None:
            self.k.ftrace.unregister(self.ops)
            self.ops = None
        self.current = name
        if name == "function":
            self.ops = FtraceOps(func=self._record, flags=OpsFlag.DYNAMIC, owner="function")
            self._apply_filter()
            self.k.ftrace.register(self.ops)
        return 0

    def _apply_filter(self) -> None:
        if self.ops is None:
            return
        funcs = self.filter or [f for fs in self.k.symbols.objects.values() for f in fs if f.traceable]
        self.ops.filter = set(funcs)
        if self.ops in self.k.ftrace.ops:
            self.k.ftrace.update_call_sites()

    def set_filter(self, names: list[str], append: bool) -> int:
        import errno
        found: list[KFunc] = []
        for name in names:
            matches = [f for fs in self.k.symbols.objects.values() for f in fs
                       if f.name == name and f.traceable]
            if not matches:
                return -errno.EINVAL
            found += matches
        self.filter = (self.filter if append else []) + [f for f in found if f not in self.filter]
        self._apply_filter()
        return 0

    def clear_filter(self) -> None:
        self.filter = []
        self._apply_filter()

    def _record(self, task: Task, func: KFunc, regs: Regs) -> None:
        if not self.tracing_on:
            return
        parent = task.stack[-1].name if task.stack else ""
        self.buffer.append(TraceEntry(self.k.clock.now_ns, task.comm, task.pid, 0, func.name, parent))

    def render(self) -> str:
        lines = [
            f"# tracer: {self.current}",
            "#",
            f"# entries-in-buffer/entries-written: {len(self.buffer)}/{len(self.buffer)}   #P:{self.k.ncpus}",
            "#",
            "#                                _-----=> irqs-off/BH-disabled",
            "#                               / _----=> need-resched",
            "#                              | / _---=> hardirq/softirq",
            "#                              || / _--=> preempt-depth",
            "#                              ||| / _-=> migrate-disable",
            "#                              |||| /     delay",
            "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION",
            "#              | |         |   |||||     |         |",
        ]
        for e in self.buffer:
            secs = e.ts_ns // 1000
            lines.append(f"{e.comm[:16]:>16}-{e.pid:<7} [{e.cpu:03d}] ..... "
                         f"{secs // 1000000:5d}.{secs % 1000000:06d}: {e.func} <-{e.parent}")
        return "\n".join(lines) + "\n"
