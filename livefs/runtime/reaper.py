"""Nothing that ``livefs run`` started outlives it.

``PR_SET_PDEATHSIG`` ends the processes we start ourselves, but not what they
start: a script's ``sleep 300 &`` is reparented when its shell dies and would
keep the run's private namespaces (and its FUSE mount) alive.  So the
processes that start commands become child subreapers: every orphan below
them becomes their child, and before they exit they kill the whole tree below
them, reaping as they go.  A pid namespace would do this by itself, but FUSE
reports callers' pids in the daemon's namespace, and the model keys its tasks
on them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def become_subreaper() -> None:
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def open_proc() -> int:
    """A handle on the real procfs, still good after /proc is covered by the mock's."""
    return os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)


def children(proc_fd: int, pid: int) -> list[int]:
    """The children of every thread of ``pid`` (CONFIG_PROC_CHILDREN)."""
    out: list[int] = []
    try:
        task_fd = os.open(f"{pid}/task", os.O_RDONLY | os.O_DIRECTORY, dir_fd=proc_fd)
    except OSError:
        return out
    try:
        for tid in os.listdir(task_fd):
            try:
                fd = os.open(f"{tid}/children", os.O_RDONLY, dir_fd=task_fd)
            except OSError:
                continue
            try:
                out += [int(c) for c in os.read(fd, 1 << 16).split()]
            finally:
                os.close(fd)
    finally:
        os.close(task_fd)
    return out


def descendants(proc_fd: int, pid: int, exclude: frozenset[int] = frozenset()) -> list[int]:
    found, todo = [], [c for c in children(proc_fd, pid) if c not in exclude]
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(proc_fd, child)
    return found


def kill_descendants(proc_fd: int | None = None, exclude: frozenset[int] = frozenset(), rounds: int = 100) -> None:
    """SIGKILL everything below this process except ``exclude`` (and what is
    below them), reaping what becomes ours.  Several rounds, because a process
    may fork between our look and our kill.  ``proc_fd``: a handle from
    :func:`open_proc`, for a caller whose /proc is no longer the real one."""
    if proc_fd is None:
        fd = open_proc()
        try:
            return kill_descendants(fd, exclude, rounds)
        finally:
            os.close(fd)
    me = os.getpid()
    for _ in range(rounds):
        tree = descendants(proc_fd, me, exclude)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children(proc_fd, me):
            if pid not in exclude:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        if not tree:
            return
        time.sleep(0.01)
