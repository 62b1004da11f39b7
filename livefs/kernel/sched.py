"""Where tasks run, sleep, wake, fork and exit -- the scheduling points the
consistency model depends on -- and the staging controls that put tasks there.

A staged task sleeps in a named function (so a stack check finds it there),
spins on a CPU in a kernel loop that calls ``cond_resched()`` (so only its own
cond_resched can switch it), or sits in user space.  Fake signals reach it the
way klp_send_signals() reaches real tasks: an interruptibly sleeping user task
is kicked back to user space (and switches there), a kthread is only woken.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

import attrs

from .clock import NSEC_PER_MSEC, Work
from .kthread import Kthreads
from .livepatch.consistency import ConsistencyModel
from .livepatch.record import Cause
from .livepatch.transition import (forbidden_functions, incoming_functions, initial_state, klp_copy_process,
                                   klp_new_task, klp_staged_switch, klp_task_exit, klp_try_switch_task,
                                   klp_update_patch_state)
from .symbols import KFunc
from .tasks import RunState, Task, TaskKind

if TYPE_CHECKING:
    from .kernel import Kernel

COND_RESCHED_PERIOD_NS = 10 * NSEC_PER_MSEC


@attrs.define(eq=False)
class Blocked:
    """A task that stays inside the function it called until ``until()``."""

    until: Callable[[], bool]
    then: Callable[[], None]
    work: Work | None = None


@attrs.define(eq=False)
class Scheduler:
    k: "Kernel"
    spinning: list[Task] = attrs.field(factory=list)
    blocked: dict[Task, Blocked] = attrs.field(factory=dict)
    _tick_pending: bool = False
    _kworkers: int = 0
    _idle_kicked: set[Task] = attrs.field(factory=set)
    kthreads: Kthreads = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.kthreads = Kthreads(self.k)

    def _base(self, kind: TaskKind) -> list[KFunc]:
        f = self.k.vmlinux_func
        return [f("kthread")] if kind is TaskKind.KTHREAD else [f("do_syscall_64")]

    # -- staging -----------------------------------------------------------------
    def spawn(self, kind: TaskKind, comm: str, func: KFunc | None, interruptible: bool = True) -> Task:
        """A new task sleeping in ``func`` (or idle in user space / its kthread loop)."""
        task = Task(self.k.tasks.new_pid(), comm[:15], kind, ppid=2 if kind is TaskKind.KTHREAD else 1,
                    staged=True, interruptible=interruptible)
        self._sleep_in(task, func)
        klp = self.k.livepatch
        if klp.in_transition():
            # created mid-transition: born switched, like its creator would be,
            # unless it is staged straight into code the transition takes away
            held = self._takes_away(func)
            klp_new_task(klp, task, initial_state(klp) if held else klp.target_state, held)
        return self.k.tasks.add(task)

    def _takes_away(self, func: KFunc | None) -> bool:
        klp = self.k.livepatch
        return func is not None and any(code is func for code, _ in forbidden_functions(klp))

    def _consistent_with(self, task: Task, func: KFunc | None) -> None:
        """A task staged into code that the transition in progress takes away
        cannot have switched yet: it is put back to the initial state, pending.
        One staged into the code the transition brings must have switched."""
        klp = self.k.livepatch
        if not klp.in_transition() or func is None:
            return
        if self._takes_away(func):
            if (task.patch_state, task.patch_pending) != (initial_state(klp), True):
                klp_new_task(klp, task, initial_state(klp), True)
        elif task.patch_state != klp.target_state and any(code is func for code in incoming_functions(klp)):
            klp_staged_switch(klp, task)

    def _sleep_in(self, task: Task, func: KFunc | None) -> None:
        if func is None and task.kind is TaskKind.USER:
            task.stack, task.state = [], RunState.USER
            return
        task.stack = self._base(task.kind) + ([func] if func else []) + [self.k.vmlinux_func("schedule")]
        task.state, task.cpu = RunState.SLEEPING, None

    def sleep(self, task: Task, func: KFunc, interruptible: bool = True) -> int:
        self._stop_spinning(task)
        task.interruptible = interruptible
        self._sleep_in(task, func)
        self._consistent_with(task, func)
        return 0

    def wake(self, task: Task) -> int:
        """The task leaves the function it sleeps in: a kthread goes back to
        its own loop, a user task returns to user space."""
        self._stop_spinning(task)
        if task.kind is TaskKind.USER:
            return self.return_to_user(task)
        self._sleep_in(task, None)
        return 0

    def return_to_user(self, task: Task, cause: Cause = Cause.RETURN_TO_USER) -> int:
        if task.kind is not TaskKind.USER:
            return -errno.EINVAL
        self._stop_spinning(task)
        task.stack, task.state, task.cpu = [], RunState.USER, None
        klp_update_patch_state(self.k.livepatch, task, cause)  # exit_to_user_mode
        return 0

    def spin(self, task: Task, func: KFunc, cpu: int | None = None) -> int:
        """CPU-bound in a kernel loop inside ``func`` that calls cond_resched()."""
        if cpu is None:
            cpu = self.k.ncpus - 1
        if not 0 <= cpu < self.k.ncpus:
            return -errno.EINVAL
        task.stack = self._base(task.kind) + [func]
        task.state, task.cpu = RunState.RUNNING, cpu
        self._consistent_with(task, func)
        if task not in self.spinning:
            self.spinning.append(task)
        self.cond_resched_armed()
        return 0

    def fork(self, parent: Task, comm: str | None = None) -> Task:
        child = Task(self.k.tasks.new_pid(), (comm or parent.comm)[:15], parent.kind, ppid=parent.pid,
                     staged=True)
        klp_copy_process(self.k.livepatch, parent, child)
        self._sleep_in(child, None)
        return self.k.tasks.add(child)

    def exit(self, task: Task) -> int:
        self._stop_spinning(task)
        klp_task_exit(self.k.livepatch, task)
        self.k.tasks.remove(task.pid)
        return 0

    def _stop_spinning(self, task: Task) -> None:
        if task in self.spinning:
            self.spinning.remove(task)
            task.cpu = None

    # -- kernel workers ------------------------------------------------------------
    def spawn_kworker(self) -> Task:
        self._kworkers += 1
        worker = Task(self.k.tasks.new_pid(), f"kworker/u{2 * self.k.ncpus}:{self._kworkers}",
                      TaskKind.KTHREAD, ppid=2)
        f = self.k.vmlinux_func
        worker.stack = [f("kthread"), f("worker_thread"), f("schedule")]
        return self.k.tasks.add(worker)

    def run_work(self, worker: Task, obj: str, name: str) -> None:
        """The worker runs ``obj:name`` as a work item (process_one_work)."""
        f = self.k.vmlinux_func
        worker.stack = [f("kthread"), f("worker_thread"), f("process_one_work")]
        worker.state, worker.cpu = RunState.RUNNING, 0
        outer = self.k.current
        self.k.current = worker
        try:
            self.k.call(worker, obj, name)
        finally:
            self.k.current = outer
            if worker not in self.blocked:
                self.kthread_loop(worker)

    def kthread_loop(self, worker: Task) -> None:
        """A kworker back at the top of its loop, waiting for work.  Under the
        kGraft model that is its safe point (kGraft annotated kthread loops):
        a pending kthread switches there."""
        f = self.k.vmlinux_func
        worker.stack = [f("kthread"), f("worker_thread"), f("schedule")]
        worker.state, worker.cpu = RunState.SLEEPING, None
        if self.k.livepatch.model is ConsistencyModel.KGRAFT:
            klp_update_patch_state(self.k.livepatch, worker, Cause.KTHREAD_LOOP)

    def block_in_call(self, task: Task, period_ns: int, until: Callable[[], bool],
                      then: Callable[[], None]) -> None:
        """Called from a function body: the task sleeps (msleep) inside the
        function, waking every ``period_ns`` to test ``until``; when it holds the
        function returns (``then`` runs) and the task goes idle."""
        blocked = Blocked(until, then)
        self.blocked[task] = blocked
        task.stack.append(self.k.vmlinux_func("msleep"))
        task.state, task.cpu = RunState.SLEEPING, None

        def poll() -> None:
            if self.blocked.get(task) is not blocked:
                return
            if until():
                self.finish_blocked_call(task)
            else:
                blocked.work = self.k.wq.schedule(period_ns, "msleep", poll)

        blocked.work = self.k.wq.schedule(period_ns, "msleep", poll)

    def is_blocked(self, task: Task) -> bool:
        return task in self.blocked

    def finish_blocked_call(self, task: Task) -> None:
        blocked = self.blocked.pop(task, None)
        if blocked is None:
            return
        if blocked.work is not None:
            blocked.work.cancel()
        outer = self.k.current
        self.k.current = task
        try:
            blocked.then()
        finally:
            self.k.current = outer
        self.kthread_loop(task)

    # -- signals --------------------------------------------------------------------
    def wake_up_interruptible(self, task: Task) -> None:
        """wake_up_state(TASK_INTERRUPTIBLE): it runs, finds nothing to do, and
        goes back to sleep where it was."""
        if task.state is RunState.SLEEPING and task.interruptible:
            task.wakeups += 1
            kt = self.kthreads.of(task)
            if kt is not None and kt.sleeping == "schedule":  # back to its loop, as woken
                self.kthreads.wake_up_process(task)

    def fake_signal(self, task: Task) -> None:
        """set_notify_signal(): an interruptible sleep ends (EINTR) and the task
        passes through the exit-to-user path; a task in user space switches
        at once."""
        if task.external and not task.in_syscall:
            klp_update_patch_state(self.k.livepatch, task, Cause.FAKE_SIGNAL)
        elif task.state is RunState.USER or (task.state is RunState.SLEEPING and task.interruptible
                                             and task.kind is TaskKind.USER and not task.external):
            self.return_to_user(task, Cause.FAKE_SIGNAL)

    # -- CPUs ------------------------------------------------------------------------
    def cpu_curr(self, cpu: int) -> Task:
        """Who runs on ``cpu``: the task in a syscall or kernel work runs on
        CPU 0, a spinning task on its CPU, otherwise the CPU idles."""
        if cpu == 0 and self.k.current is not None:
            return self.k.current
        for task in self.spinning:
            if task.cpu == cpu:
                return task
        return self.k.tasks.idle[cpu]

    def task_curr(self, task: Task) -> bool:
        return task.cpu is not None and 0 <= task.cpu < self.k.ncpus and self.cpu_curr(task.cpu) is task

    def wake_up_if_idle(self, idle: Task) -> None:
        """The idle task runs one pass of its loop, where a pending switch happens."""
        if idle.cpu is None or self.cpu_curr(idle.cpu) is not idle or idle in self._idle_kicked:
            return
        self._idle_kicked.add(idle)

        def idle_loop() -> None:
            self._idle_kicked.discard(idle)
            klp_update_patch_state(self.k.livepatch, idle, Cause.IDLE_LOOP)

        self.k.wq.schedule(0, f"idle loop cpu{idle.cpu}", idle_loop)

    # -- cond_resched ---------------------------------------------------------------
    def cond_resched(self, task: Task) -> None:
        """cond_resched() of v6.4-v6.15: __klp_sched_try_switch(), a pending
        task checks its own stack (before v6.4 and from v6.16 it does not)."""
        self._sched_try_switch(task, "cond_resched")

    def schedule(self, task: Task, freezable: bool) -> None:
        """The running task goes to sleep through __schedule(): from v6.16 a
        TASK_FREEZABLE sleep tries a switch there (klp_sched_try_switch(prev))."""
        if freezable:
            self._sched_try_switch(task, "__schedule")

    def _sched_try_switch(self, task: Task, where: str) -> None:
        klp = self.k.livepatch
        if not klp.sched_switch_enabled(where) or not task.patch_pending or klp.model is not ConsistencyModel.HYBRID:
            return
        outer = self.k.current
        self.k.current = task
        try:
            klp_try_switch_task(klp, task, Cause.COND_RESCHED)
        finally:
            self.k.current = outer

    def cond_resched_armed(self) -> None:
        if self.spinning and not self._tick_pending and self.k.livepatch.cond_resched_enabled:
            self._tick_pending = True
            self.k.wq.schedule(COND_RESCHED_PERIOD_NS, "cond_resched", self._tick)

    def _tick(self) -> None:
        self._tick_pending = False
        for task in list(self.spinning):
            self.cond_resched(task)
        if any(t.patch_pending for t in self.spinning):
            self.cond_resched_armed()
