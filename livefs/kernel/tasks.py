"""Task structs of the model.

Only what the consistency model and /proc need: identity, kind, a kernel call
stack, whether the task is running on a CPU, and the livepatch per-task state
(``patch_state`` and the TIF_PATCH_PENDING flag).  Real processes that touch a
live mount become user tasks here on first contact.
"""

from __future__ import annotations

import enum
import errno
import os
from typing import Callable, Iterator

import attrs

from .symbols import KFunc

KLP_UNDEFINED = -1
KLP_UNPATCHED = 0
KLP_PATCHED = 1

# include/linux/threads.h: pids below RESERVED_PIDS are handed out only until
# the first wrap; PID_MAX_DEFAULT is the kernel's own pid_max (pid_idr_init()
# raises it to 1024 per possible CPU past 32 CPUs; systemd's 50-pid-max.conf
# sets PID_MAX_LIMIT on 64-bit machines)
RESERVED_PIDS = 300
PID_MAX_DEFAULT = 0x8000
PID_MAX_LIMIT = 4 * 1024 * 1024
DEFAULT_PID_BASE = 1000


class TaskKind(enum.Enum):
    USER = "user"
    KTHREAD = "kthread"
    IDLE = "idle"


class RunState(enum.Enum):
    USER = "user"          # in user space: no kernel stack
    SLEEPING = "sleeping"  # in the kernel, off CPU, with a saved stack
    RUNNING = "running"    # on a CPU in the kernel (only `current` may check itself)


@attrs.define(eq=False, repr=False)
class Task:
    pid: int
    comm: str
    kind: TaskKind = TaskKind.USER
    tgid: int = 0
    ppid: int = 0
    cpu: int | None = None  # set while running on a CPU (idle tasks: their CPU)
    stack: list[KFunc] = attrs.field(factory=list)
    in_syscall: bool = False
    patch_state: int = KLP_UNDEFINED
    patch_pending: bool = False
    external: bool = False  # a real process of the host seen through the mount
    state: RunState = RunState.SLEEPING
    staged: bool = False  # made through the task staging controls
    interruptible: bool = True
    wakeups: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.tgid:
            self.tgid = self.pid

    def __repr__(self) -> str:
        return f"<Task {self.comm}:{self.pid}>"

    @property
    def is_kthread(self) -> bool:
        return self.kind is not TaskKind.USER


@attrs.define
class TaskList:
    """All tasks (for_each_process_thread) plus one idle task per CPU."""

    tasks: dict[int, Task] = attrs.field(factory=dict)
    idle: list[Task] = attrs.field(factory=list)
    # where the model's next pid is looked for (the kernel's pid_ns->idr cursor)
    next_pid: int = DEFAULT_PID_BASE
    # /proc/sys/kernel/pid_max: every pid is below it
    pid_max: int = PID_MAX_DEFAULT
    # pids held outside the model (a mount's: the host's processes, which
    # share the model's pid space), never handed out
    taken: Callable[[int], bool] | None = None

    def add(self, task: Task) -> Task:
        self.tasks[task.pid] = task
        return task

    def new_pid(self) -> int:
        """alloc_pid(): idr_alloc_cyclic(&ns->idr, ..., RESERVED_PIDS, pid_max)
        -- the first free pid from the cursor on, wrapping from pid_max - 1 to
        RESERVED_PIDS; EAGAIN when every pid is in use."""
        pid = self.next_pid
        for _ in range(self.pid_max):
            if pid >= self.pid_max:
                pid = RESERVED_PIDS
            if pid not in self.tasks and not (self.taken is not None and self.taken(pid)):
                self.next_pid = pid + 1
                return pid
            pid += 1
        raise OSError(errno.EAGAIN, "no free pid below pid_max")

    def remove(self, pid: int) -> None:
        self.tasks.pop(pid, None)

    def get(self, pid: int) -> Task | None:
        return self.tasks.get(pid)

    def for_each_process_thread(self) -> Iterator[Task]:
        return iter(list(self.tasks.values()))

    def all_with_idle(self) -> Iterator[Task]:
        yield from self.for_each_process_thread()
        yield from self.idle
