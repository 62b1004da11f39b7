"""Task structs of the model.

Only what the consistency model and /proc need: identity, kind, a kernel call
stack, whether the task is running on a CPU, and the livepatch per-task state
(``patch_state`` and the TIF_PATCH_PENDING flag).  Real processes that touch a
live mount become user tasks here on first contact.
"""

from __future__ import annotations

import enum
from typing import Iterator

import attrs

from .symbols import KFunc

KLP_UNDEFINED = -1
KLP_UNPATCHED = 0
KLP_PATCHED = 1


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
    # pids the model hands out itself start here; a live mount puts this above
    # the host's pid_max so they never meet the pids of real processes
    next_pid: int = 1000

    def add(self, task: Task) -> Task:
        self.tasks[task.pid] = task
        return task

    def new_pid(self) -> int:
        while self.next_pid in self.tasks:
            self.next_pid += 1
        pid = self.next_pid
        self.next_pid += 1
        return pid

    def remove(self, pid: int) -> None:
        self.tasks.pop(pid, None)

    def get(self, pid: int) -> Task | None:
        return self.tasks.get(pid)

    def for_each_process_thread(self) -> Iterator[Task]:
        return iter(list(self.tasks.values()))

    def all_with_idle(self) -> Iterator[Task]:
        yield from self.for_each_process_thread()
        yield from self.idle
