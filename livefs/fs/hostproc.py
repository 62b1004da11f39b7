"""The /proc that ``livefs run`` lays over the real one.

Inside the namespace the real procfs is bind-mounted at ``hostproc`` (a
directory of this mount) and this view is bound over ``/proc``.  Everything the
mock does not provide is a symlink into the real procfs, so bash, ps, sysctl
and ``/dev/fd/N`` keep working (magic links stay magic); what the mock does
provide -- ``patch_state`` of every process, the sysctls and files it owns,
proc entries created by modules -- is served from the model.  The daemon reads
the host's /proc (it lives outside the namespace) to learn which processes
exist.
"""

from __future__ import annotations

import os
import stat as st_mod
from typing import Callable, Iterable, TypeVar

import attrs

from .tree import Attr, Dir, Node, Request, Symlink

HOST_PROC = "/proc"
MOCK_SYSCTLS = ("ftrace_enabled", "tainted")
# per-process links whose target is a path, not an object: give the path itself,
# so programs that find themselves through /proc/self/exe see a normal path
PLAIN_LINKS = ("exe", "cwd", "root")


def host_process_info(pid: int) -> tuple[str, int, int]:
    """(comm, ppid, tgid) of a host process, from /proc; blanks if it is gone.
    Every new process that touches the mount pays for this once, so a
    single-threaded one (num_threads 1: it is its own thread group) costs
    one read; only a thread of a bigger group has its status read for Tgid."""
    try:
        with open(f"{HOST_PROC}/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        ppid = int(fields[1])
        if int(fields[17]) == 1:  # num_threads
            return comm, ppid, pid
        tgid = pid
        with open(f"{HOST_PROC}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    tgid = int(line.split()[1])
                    break
        return comm, ppid, tgid
    except (OSError, ValueError, IndexError):
        return "", 0, pid


def host_pid_taken(pid: int) -> bool:
    """Whether a host process or thread has ``pid`` (/proc/<tid> resolves
    for threads too, though only thread-group leaders are listed): a live
    mount's model shares the host's pid space and never takes such a pid."""
    return os.path.exists(f"{HOST_PROC}/{pid}")


def host_euid(pid: int) -> int:
    """The owner procfs gives a host process's /proc/<pid> files (its euid,
    or root's when it is not dumpable): the owner of the host's own
    /proc/<pid>; root's for a model task or a process that is gone."""
    try:
        return os.stat(f"{HOST_PROC}/{pid}").st_uid
    except OSError:
        return 0


def host_dmesg_restrict() -> bool:
    """The host's kernel.dmesg_restrict, which the mock's /dev/kmsg obeys as
    the host's does: a reader the host would refuse is refused.  Unreadable
    counts as restricted."""
    try:
        with open(f"{HOST_PROC}/sys/kernel/dmesg_restrict", "rb") as f:
            return int(f.read().strip() or b"1") != 0
    except (OSError, ValueError):
        return True


HOST_RETRIES = 3
T = TypeVar("T")


def _retried(read: Callable[[], T]) -> T:
    """A read of the host /proc, tried again on failure; the last error is the
    request's.  Swallowing it would hide every host process from the command."""
    for attempt in range(HOST_RETRIES - 1):
        try:
            return read()
        except FileNotFoundError:
            raise
        except OSError:
            pass
    return read()


def _host_listing(path: str) -> list[str]:
    return _retried(lambda: os.listdir(path))


def _host_is_dir(path: str) -> bool:
    """Whether a host /proc entry exists; only "no such entry" answers no."""
    try:
        return st_mod.S_ISDIR(_retried(lambda: os.stat(path)).st_mode)
    except FileNotFoundError:
        return False


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _host_show(path: str):
    def show(req: Request) -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return show


@attrs.define(eq=False)
class HostDir(Dir):
    """A host directory served by value: a lookup stats the one name asked for."""

    path: str = ""

    def lookup(self, req: Request, name: str) -> Node | None:
        return host_child(self.path, name)


def host_child(directory: str, name: str) -> Node | None:
    """One name of a host directory served by value, looked up alone."""
    return passthrough(f"{directory}/{name}") if name not in ("", ".", "..") else None


def passthrough(path: str) -> Node | None:
    """A host node served by value: a /proc/sys entry (sysctl(8) insists that
    what it opens really lies under /proc/sys, so these cannot be symlinks), or
    one of the host's other /sys/kernel entries beside the mock's.  Read-only,
    and shown so: a write would change the host's real sysctl or sysfs
    attribute with the daemon's rights, which livefs never does.  Sizes are the
    host's (0 in procfs, 4096 for a sysfs attribute, a binary one's own size);
    a symlink keeps its target, so a directory's link count is the host's."""
    try:
        st = os.lstat(path)
        target = os.readlink(path) if st_mod.S_ISLNK(st.st_mode) else ""
    except OSError:
        return None
    if target:
        return Symlink(target=lambda req: target)
    if st_mod.S_ISDIR(st.st_mode):
        return HostDir(perm=st.st_mode & 0o7777, entries=lambda req: host_entries(path, ()), path=path)
    perm = st.st_mode & 0o7555
    return Attr(perm=perm, st_size=st.st_size, show=_host_show(path) if perm & 0o444 else None)


def host_entries(path: str, mine: Iterable[str]) -> Iterable[tuple[str, Node]]:
    """The host directory ``path`` served read-only by value, without the names in ``mine``."""
    skip = set(mine)
    for name in sorted(_listdir(path)):
        if name not in skip and (node := passthrough(f"{path}/{name}")) is not None:
            yield name, node


def _patch_state(pid: int) -> Attr:
    def show(req: Request) -> str:
        k = req.kernel
        task = k.tasks.get(pid)
        if task is None:
            task = k.task_for(pid, *host_process_info(pid))
        return f"{task.patch_state}\n"
    # S_IRUSR, owned by the process, as procfs has it: a user reads their own
    return Attr(perm=0o400, st_size=0, show=show, owner=lambda req: host_euid(pid))


class HostProc:
    def __init__(self, mock_proc: Dir, hostproc: str) -> None:
        self.mock = mock_proc
        self.hostproc = hostproc.rstrip("/")

    def link(self, rel: str) -> Symlink:
        target = f"{self.hostproc}/{rel}"
        return Symlink(target=lambda req: target)

    def _linked(self, rel: str, mine: dict[str, Node]) -> Iterable[tuple[str, Node]]:
        """The host directory ``rel`` as symlinks, with ``mine`` in place of (or beside) its entries."""
        for name in sorted(_listdir(f"{HOST_PROC}/{rel}")):
            if name not in mine:
                yield name, self.link(f"{rel}/{name}")
        yield from mine.items()

    @staticmethod
    def plain_link(path: str) -> Symlink:
        def target(req: Request) -> str:
            try:
                return os.readlink(path)
            except OSError:
                return "/"
        return Symlink(target=target)

    def _pid_dir(self, pid: int, rel: str) -> Dir:
        def entries(req: Request) -> Iterable[tuple[str, Node]]:
            mine: dict[str, Node] = {"patch_state": _patch_state(pid)}
            for name in PLAIN_LINKS:
                mine[name] = self.plain_link(f"{HOST_PROC}/{rel}/{name}")
            if os.path.isdir(f"{HOST_PROC}/{rel}/task"):
                mine["task"] = Dir(perm=0o555, entries=lambda r: [
                    (tid, self._pid_dir(int(tid), f"{rel}/task/{tid}"))
                    for tid in sorted(_listdir(f"{HOST_PROC}/{rel}/task"), key=int)])
            return self._linked(rel, mine)

        def child(req: Request, name: str) -> Node | None:
            """One name without listing the host directory (what ``entries``
            would give for it)."""
            if name == "patch_state":
                return _patch_state(pid)
            if name in PLAIN_LINKS:
                return self.plain_link(f"{HOST_PROC}/{rel}/{name}")
            if name == "task":
                return None  # rare: found in the listing
            return self.link(f"{rel}/{name}") if os.path.lexists(f"{HOST_PROC}/{rel}/{name}") else None
        return Dir(perm=0o555, entries=entries, child=child)

    def _sys_dir(self) -> Dir:
        def mock_kernel(req: Request) -> Dir:
            return self.mock.lookup(req, "sys").lookup(req, "kernel")  # type: ignore[union-attr, return-value]

        def kernel(req: Request) -> Iterable[tuple[str, Node]]:
            mine = {n: node for n, node in mock_kernel(req).listing(req) if n in MOCK_SYSCTLS}
            yield from host_entries(f"{HOST_PROC}/sys/kernel", mine)
            yield from mine.items()

        def kernel_child(req: Request, name: str) -> Node | None:
            if name in MOCK_SYSCTLS:
                return mock_kernel(req).lookup(req, name)
            return host_child(f"{HOST_PROC}/sys/kernel", name)

        kernel_dir = Dir(perm=0o555, entries=kernel, child=kernel_child)

        def top(req: Request) -> Iterable[tuple[str, Node]]:
            for name in sorted(_listdir(f"{HOST_PROC}/sys")):
                if name == "kernel":
                    yield name, kernel_dir
                elif (node := passthrough(f"{HOST_PROC}/sys/{name}")) is not None:
                    yield name, node

        def child(req: Request, name: str) -> Node | None:
            return kernel_dir if name == "kernel" else host_child(f"{HOST_PROC}/sys", name)

        return Dir(perm=0o555, entries=top, child=child)

    def build(self) -> Dir:
        sys_dir = self._sys_dir()

        def entries(req: Request) -> Iterable[tuple[str, Node]]:
            host = _host_listing(HOST_PROC)
            mock = dict(self.mock.listing(req))
            mine: dict[str, Node] = {n: node for n, node in mock.items() if not n.isdigit() and n != "sys"}
            mine["sys"] = sys_dir
            for name in sorted((n for n in host if n.isdigit()), key=int):
                mine[name] = self._pid_dir(int(name), name)
            for name, node in mock.items():
                if name.isdigit() and name not in mine:
                    mine[name] = node  # a task only the model has
            return self._top(host, mine)

        def hidden(req: Request, name: str) -> Node | None:
            if name.isdigit() and _host_is_dir(f"{HOST_PROC}/{name}"):
                return self._pid_dir(int(name), name)  # a thread id: not listed, still there
            return self.mock.lookup(req, name)

        def child(req: Request, name: str) -> Node | None:
            """One name without listing every host process and model task
            (what ``entries`` and ``hidden`` would give for it): every
            request under /proc resolves its path through here."""
            if name.isdigit():
                return hidden(req, name)
            if name == "sys":
                return sys_dir
            node = self.mock.lookup(req, name)
            if node is not None:
                return node
            return self.link(name) if os.path.lexists(f"{HOST_PROC}/{name}") else None

        return Dir(perm=0o555, entries=entries, hidden=hidden, child=child)

    def _top(self, host: list[str], mine: dict[str, Node]) -> Iterable[tuple[str, Node]]:
        for name in sorted(n for n in host if not n.isdigit()):
            if name not in mine:
                yield name, self.link(name)
        yield from mine.items()
