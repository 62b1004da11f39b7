"""Mock-only task staging: sys/kernel/debug/livefs/tasks.

Each write is one command that puts model tasks where a test wants
them; reads list the model's own tasks.  This is outside every kernel path on
purpose: no real kernel has it.

    spawn kthread|user COMM [FUNC[@OBJ] [uninterruptible]]
    sleep PID FUNC[@OBJ] [uninterruptible]
    wake PID          leave the function (a user task returns to user space)
    user PID          return to user space
    spin PID FUNC[@OBJ] [CPU]   CPU-bound in FUNC, calling cond_resched()
    fork PID [COMM]
    exit PID
"""

from __future__ import annotations

import errno

from livefs.kernel.symbols import KFunc
from livefs.kernel.tasks import Task, TaskKind

from .tree import Request


class StagingError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.errno = code


def _func(req: Request, spec: str) -> KFunc:
    name, _, obj = spec.partition("@")
    symbols = req.kernel.symbols
    if obj:
        found = symbols.find(obj, name)
    else:
        found = symbols.find("vmlinux", name) or [f for fs in symbols.objects.values() for f in fs
                                                   if f.name == name]
    if len(found) != 1:
        raise StagingError(errno.EINVAL)
    return found[0]


def _task(req: Request, text: str) -> Task:
    if not text.isdigit():
        raise StagingError(errno.EINVAL)
    task = req.kernel.tasks.get(int(text))
    if task is None:
        raise StagingError(errno.ESRCH)
    if not task.staged:
        raise StagingError(errno.EPERM)
    return task


def _command(req: Request, words: list[str]) -> None:
    sched = req.kernel.sched
    op, args = words[0], words[1:]
    flag = "uninterruptible" in args
    args = [a for a in args if a != "uninterruptible"]
    if op == "spawn" and len(args) in (2, 3) and args[0] in ("kthread", "user"):
        kind = TaskKind.KTHREAD if args[0] == "kthread" else TaskKind.USER
        func = _func(req, args[2]) if len(args) == 3 else None
        sched.spawn(kind, args[1], func, interruptible=not flag)
    elif op == "sleep" and len(args) == 2:
        sched.sleep(_task(req, args[0]), _func(req, args[1]), interruptible=not flag)
    elif op == "wake" and len(args) == 1:
        sched.wake(_task(req, args[0]))
    elif op == "user" and len(args) == 1:
        if sched.return_to_user(_task(req, args[0])):
            raise StagingError(errno.EINVAL)
    elif op == "spin" and len(args) in (2, 3):
        if len(args) == 3 and not (args[2].isdigit() and int(args[2]) < req.kernel.ncpus):
            raise StagingError(errno.EINVAL)
        sched.spin(_task(req, args[0]), _func(req, args[1]), int(args[2]) if len(args) == 3 else None)
    elif op == "fork" and len(args) in (1, 2):
        sched.fork(_task(req, args[0]), args[1] if len(args) == 2 else None)
    elif op == "exit" and len(args) == 1:
        sched.exit(_task(req, args[0]))
    else:
        raise StagingError(errno.EINVAL)


def store(req: Request, data: bytes) -> int:
    """One command per write, like a sysfs store; every argument is checked
    before anything changes, so a bad command changes nothing."""
    lines = [line.split() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    if len(lines) != 1:
        return -errno.EINVAL
    try:
        _command(req, lines[0])
    except StagingError as exc:
        return -exc.errno
    return 0


def show(req: Request) -> str:
    out = [f"{'PID':>7} {'COMM':<16} {'KIND':<8} {'STATE':<9} {'PATCH_STATE':>11} {'PENDING':>7}  STACK"]
    for t in sorted(req.kernel.tasks.tasks.values(), key=lambda t: t.pid):
        if t.external:
            continue
        stack = " < ".join(f.name for f in reversed(t.stack)) or "-"
        out.append(f"{t.pid:>7} {t.comm:<16} {t.kind.value:<8} {t.state.value:<9} {t.patch_state:>11} "
                   f"{int(t.patch_pending):>7}  {stack}")
    return "\n".join(out) + "\n"
