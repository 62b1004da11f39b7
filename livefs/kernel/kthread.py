"""Kernel threads for module code: kthread_run(), msleep(), kthread_should_stop(),
kthread_stop(), wake_up_process().

A kthread's function is a function the module declares; it runs as that
task (``call.task``) and may sleep anywhere in straight-line code, in any
function it calls (a replacement function too): ``call.msleep(100)`` leaves the
task asleep *inside* every function on its stack, where a livepatch stack
check finds it, until model time reaches the end of the sleep.

Each kthread runs its Python code on a thread of its own, but never at the
same time as anything else in the model: whoever resumes it (the work queue
when its sleep ends, kthread_stop()) waits until it sleeps again or returns,
so the model stays single-threaded and deterministic under virtual time.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING, Any

import attrs

from .clock import NSEC_PER_MSEC, Work
from .livepatch.transition import klp_copy_process, klp_task_exit
from .printk import KERN_ERR
from .symbols import KFunc
from .tasks import RunState, Task, TaskKind

if TYPE_CHECKING:
    from .kernel import Kernel

# kthread_stop() ends the sleeps of a thread that does not stop at once as if
# their time had passed; one that still sleeps after this many is given up on
STOP_ROUNDS = 100_000


class KthreadKilled(BaseException):
    """Unwinds a parked kthread whose machine is shut down (not an error of the module)."""


@attrs.define(eq=False)
class Kthread:
    task: Task
    func: KFunc
    args: tuple[Any, ...]
    should_stop: bool = False
    started: bool = False
    done: bool = False
    ret: int = 0
    sleeping: str | None = None  # "msleep" (uninterruptible) or "schedule" (until woken or timed out)
    woken: bool = False
    timer: Work | None = None
    killed: bool = False
    thread: threading.Thread | None = None
    go: threading.Semaphore = attrs.field(factory=lambda: threading.Semaphore(0))
    back: threading.Semaphore = attrs.field(factory=lambda: threading.Semaphore(0))


class Kthreads:
    """The kthreads module code started, by task."""

    def __init__(self, k: "Kernel") -> None:
        self.k = k
        self.threads: dict[Task, Kthread] = {}

    def of(self, task: Task) -> Kthread | None:
        return self.threads.get(task)

    # -- creation and the end ------------------------------------------------------
    def run(self, func: KFunc, comm: str, *args: Any) -> Task:
        """kthread_run(): a kthread, child of kthreadd (born with kthreadd's
        patch state, as copy_process() makes it), that starts running ``func``
        as soon as the caller lets the CPU go (zero-delay work)."""
        k = self.k
        task = Task(k.tasks.new_pid(), comm[:15], TaskKind.KTHREAD, ppid=2, interruptible=False)
        klp_copy_process(k.livepatch, k.tasks.get(2), task)
        task.stack = [k.vmlinux_func("kthread"), k.vmlinux_func("schedule")]
        kt = Kthread(task, func, args)
        kt.thread = threading.Thread(target=self._main, args=(kt,), name=f"kthread {comm}", daemon=True)
        kt.thread.start()
        self.threads[task] = kt
        k.tasks.add(task)
        kt.timer = k.wq.schedule(0, f"kthread start {comm}", lambda: self._start(kt))
        return task

    def _start(self, kt: Kthread) -> None:
        kt.timer = None
        kt.started = True
        kt.task.stack = [self.k.vmlinux_func("kthread")]
        self._resume(kt)

    def _main(self, kt: Kthread) -> None:
        kt.go.acquire()
        try:
            if not kt.killed:
                k = self.k
                ret = k.call(kt.task, kt.func.obj, kt.func.name, *kt.args)
                kt.ret = int(ret or 0)
        except KthreadKilled:
            pass
        except Exception:  # the body raised: Kernel.call logged it as the module's bug
            kt.ret = -errno.EFAULT
        finally:
            kt.done = True
            kt.back.release()

    def _resume(self, kt: Kthread) -> None:
        """Let the kthread run until it sleeps again or returns."""
        k, task = self.k, kt.task
        outer = k.current
        k.current = task
        task.state, task.cpu = RunState.RUNNING, 0
        kt.go.release()
        kt.back.acquire()
        k.current = outer
        if kt.done:
            self._exit(kt)
        else:
            task.state, task.cpu = RunState.SLEEPING, None

    def _exit(self, kt: Kthread) -> None:
        """do_exit() of a kthread whose function returned."""
        self.threads.pop(kt.task, None)
        klp_task_exit(self.k.livepatch, kt.task)
        self.k.tasks.remove(kt.task.pid)

    def stop(self, task: Task) -> int:
        """kthread_stop(): set should-stop, wake it, wait for its function to
        return, and give back what it returned (-EINTR if it never ran).  The
        wait takes no model time: sleeps the thread is in, or goes into before
        it returns, end at once."""
        kt = self.threads.get(task)
        if kt is None:
            return -errno.EINVAL
        if kt.thread is threading.current_thread():  # it would wait for itself forever
            raise RuntimeError(f"kthread_stop() of {task.comm}:{task.pid} from itself")
        kt.should_stop = True
        if not kt.started:  # kthread() sees KTHREAD_SHOULD_STOP before calling threadfn
            self._cancel_timer(kt)
            self._kill(kt)
            self._exit(kt)
            return -errno.EINTR
        for _ in range(STOP_ROUNDS):
            if kt.done:
                return kt.ret
            self._cancel_timer(kt)
            kt.woken = True
            self._resume(kt)
        if kt.done:
            return kt.ret
        self.k.printk_task(KERN_ERR, f"livefs: kthread_stop: {task.comm}:{task.pid} does not stop; given up")
        self._kill(kt)
        self._exit(kt)
        return -errno.EINTR

    def _kill(self, kt: Kthread) -> None:
        kt.killed = True
        kt.go.release()
        kt.back.acquire()

    def shutdown(self) -> None:
        """End every parked kthread's Python thread (a machine that is thrown away)."""
        for kt in list(self.threads.values()):
            self._cancel_timer(kt)
            if not kt.done:
                self._kill(kt)
            self.threads.pop(kt.task, None)

    @staticmethod
    def _cancel_timer(kt: Kthread) -> None:
        if kt.timer is not None:
            kt.timer.cancel()
            kt.timer = None

    # -- from inside the thread ------------------------------------------------------
    def _own(self, task: Task, what: str) -> Kthread:
        kt = self.threads.get(task)
        if kt is None or kt.thread is not threading.current_thread():
            raise RuntimeError(f"{what}() outside a kthread started with kthread_run() "
                               f"({task.comm}:{task.pid} cannot sleep in the model)")
        return kt

    def sleep(self, task: Task, ms: int | None, kind: str, freezable: bool = False) -> int:
        """Sleep in the function the task is in.  ``msleep``: uninterruptibly
        for ``ms`` (a wake-up only shortens it under kthread_stop()); ``schedule``:
        until wake_up_process() or ``ms`` (None: no timeout), with TASK_FREEZABLE
        if ``freezable`` (where v6.16+ switches a pending task).  Returns the
        milliseconds left (0 once the time is up)."""
        kt = self._own(task, kind)
        k = self.k
        deadline = None if ms is None else k.clock.now_ns + max(0, int(ms)) * NSEC_PER_MSEC
        f = k.vmlinux_func
        frames = [f("msleep"), f("schedule")] if kind == "msleep" else [f("schedule")]
        base = len(task.stack)
        task.stack.extend(frames)
        interruptible, task.interruptible = task.interruptible, kind != "msleep"
        kt.sleeping, kt.woken = kind, False
        try:
            k.sched.schedule(task, freezable)
            while True:
                if deadline is not None:
                    kt.timer = k.wq.schedule(max(0, deadline - k.clock.now_ns), kind, lambda: self._timer(kt))
                self._park(kt)
                now = k.clock.now_ns
                if deadline is not None and now >= deadline:
                    return 0
                if kt.woken and (kind != "msleep" or kt.should_stop):
                    left = 0 if deadline is None else -(-(deadline - now) // NSEC_PER_MSEC)
                    return 0 if kind == "msleep" else left
        finally:
            kt.sleeping, kt.woken = None, False
            task.interruptible = interruptible
            del task.stack[base:]

    def _timer(self, kt: Kthread) -> None:
        kt.timer = None
        self._resume(kt)

    def _park(self, kt: Kthread) -> None:
        kt.back.release()
        kt.go.acquire()
        if kt.killed:
            raise KthreadKilled()

    def wake_up_process(self, task: Task) -> bool:
        """Wake a sleeping kthread (it runs once the caller lets the CPU go);
        an msleep() goes back to sleep for the rest of its time."""
        kt = self.threads.get(task)
        if kt is None or kt.sleeping is None or kt.done:
            return False
        if kt.sleeping == "msleep":
            return True
        self._cancel_timer(kt)
        kt.woken = True
        kt.timer = self.k.wq.schedule(0, "wake_up_process", lambda: self._timer(kt))
        return True
