"""Differential testing: the same operations through a live mount with real
shell commands and through a pure model twin, compared byte for byte.

The live side runs ``bash``, ``cat``, ``echo`` and the module shims against a
mount served with one model CPU (so every unblocked transition completes inside
the triggering write, as in the twin); the twin is an in-process
:class:`~livefs.kernel.kernel.Kernel` read through the same tree.  After every
step the whole livepatch and module tree, the sysctl, ``/proc/cmdline`` and the
kernel log must be identical.  Set :attr:`LiveTwinMachine.mount` and
:attr:`LiveTwinMachine.modules` (a ``livefs modules export`` directory) first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from livefs.catalog import find
from livefs.fs.root import build_root
from livefs.fs.tree import Attr, Dir, Request, SnapshotHandle, Symlink, resolve
from livefs.fs.hostproc import host_process_info
from livefs.kernel.kernel import Kernel
from livefs.kernel.tasks import Task
from livefs.shim import unescape
from livefs.tools import tools_dir

MODULES = ("test_klp_livepatch", "test_klp_atomic_replace", "test_klp_callbacks_demo", "test_klp_callbacks_mod",
           "livepatch_sample", "test_klp_state", "test_klp_state2")
PARAMS = ("", "replace=1", "replace=0", "pre_patch_ret=-19", "pre_patch_ret=1", "bogus=3", "replace=x")
VALUES = ("0", "1", "2", "y", "n", "-1", "abc", "")
DUMPED = ("sys/kernel/livepatch", "sys/module")


def _errno_text(code: int) -> str:
    return os.strerror(code)


class Twin:
    """The pure model, read and written through the same tree as the mount.

    ``pid`` and ``comm`` name the reader of the tree (for a twin of a live
    mount: the process that reads the mount, as the live model sees it)."""

    def __init__(self, pid: int = 700_000, comm: str = "bash", ppid: int = 0) -> None:
        self.k = Kernel(ncpus=1)
        self.root = build_root()
        self.task = self.k.task_for(pid, comm, ppid=ppid, tgid=pid)

    def req(self, task: Task | None = None) -> Request:
        return Request(self.k, task or self.task)

    @contextlib.contextmanager
    def caller(self, pid: int, comm: str) -> Iterator[Task]:
        """A child of the reader making one system call and exiting, as a
        command that the live side ran (its pid, its comm after exec)."""
        task = self.k.task_for(pid, comm, ppid=self.task.pid, tgid=pid)
        try:
            with self.k.syscall(task):
                yield task
        finally:
            self.k.exit_task(pid)

    @contextlib.contextmanager
    def _request(self, task: Task | None) -> Iterator[Request]:
        """A request from ``task``, already in a syscall (a caller()), or else
        from the reader, in a syscall of its own."""
        if task is not None:
            yield self.req(task)
            return
        with self.k.syscall(self.task):
            yield self.req()

    def read(self, path: str, task: Task | None = None) -> tuple[bytes | None, int]:
        with self._request(task) as req:
            node = resolve(self.root, req, path)
            if node is None:
                return None, errno.ENOENT
            if isinstance(node, Dir):
                return None, errno.EISDIR
            if not isinstance(node, Attr) or node.show is None or not node.perm & 0o444:
                return None, errno.EACCES
            return node.open(req, os.O_RDONLY).read(req, 1 << 20, 0), 0

    def write(self, path: str, data: bytes, task: Task | None = None) -> tuple[int, bool]:
        """(errno, failed at open)."""
        with self._request(task) as req:
            node = resolve(self.root, req, path)
            if node is None:
                return errno.ENOENT, True
            if not isinstance(node, Attr) or node.store is None or not node.perm & 0o222:
                return errno.EACCES, True
            ret = SnapshotHandle(node, b"").write(req, data)
            return (-ret if ret < 0 else 0), False

    def dump(self) -> dict[str, bytes | str]:
        out: dict[str, bytes | str] = {}
        with self.k.syscall(self.task):
            for top in DUMPED:
                self._walk(top, resolve(self.root, self.req(), top), out)
        return out

    def _walk(self, path: str, node, out: dict) -> None:
        if isinstance(node, Dir):
            out[path] = "dir"
            for name, child in node.listing(self.req()):
                self._walk(f"{path}/{name}", child, out)
        elif isinstance(node, Symlink):
            out[path] = "link"
        elif isinstance(node, Attr):
            if node.show is None or not node.perm & 0o444:
                out[path] = f"mode {node.perm:o}"
            else:
                out[path] = node.open(self.req(), os.O_RDONLY).read(self.req(), 1 << 20, 0)


def live_dump(mount: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for top in DUMPED:
        for dirpath, _dirnames, filenames in os.walk(mount / top):
            rel = os.path.relpath(dirpath, mount)
            out[rel] = "dir"
            for name in filenames:
                path = Path(dirpath) / name
                mode = path.stat().st_mode & 0o777
                if not mode & 0o444:
                    out[f"{rel}/{name}"] = f"mode {mode:o}"
                else:
                    out[f"{rel}/{name}"] = path.read_bytes()
    return out


def bash(script: str, mount: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", LIVEFS_ROOT=str(mount), PATH=f"{tools_dir()}:{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def live_log(mount: Path) -> list[str]:
    fd = os.open(mount / "dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    texts = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode()
            except BlockingIOError:
                break
            texts.append(unescape(rec.split(";", 1)[1].rstrip("\n")))  # /dev/kmsg escapes newlines as \x0a
    finally:
        os.close(fd)
    return texts


class LiveTwinMachine(RuleBasedStateMachine):
    mount: Path | None = None
    modules: Path | None = None

    def __init__(self) -> None:
        super().__init__()
        assert self.mount is not None and self.modules is not None, "set LiveTwinMachine.mount and .modules"
        (self.mount / "sys/kernel/debug/livefs/reboot").write_text("1")
        # the live model knows this process (it reads the mount) by its host identity
        comm, ppid, _ = host_process_info(os.getpid())
        self.twin = Twin(os.getpid(), comm, ppid)

    def _run(self, script: str) -> tuple[subprocess.CompletedProcess, int]:
        """A command run live, and its pid: ``script`` runs in a shell that
        first says its pid (exec keeps it)."""
        r = bash(f"echo $$; {script}", self.mount)
        pid, _, rest = r.stdout.partition("\n")
        r.stdout = rest
        return r, int(pid)

    def _patches(self) -> list[str]:
        return [p.name for p in self.twin.k.livepatch.sysfs_patches]

    @rule(name=st.sampled_from(MODULES), params=st.sampled_from(PARAMS))
    def insmod(self, name: str, params: str) -> None:
        r, pid = self._run(f"exec insmod {self.modules}/{name}.ko {params}")
        with self.twin.caller(pid, "insmod"):
            ret = self.twin.k.load_module(find(name), params)
        # kmod takes any init_module() return that is not negative as success
        # (a late module's positive pre-patch callback return reaches it so)
        assert (r.returncode == 0) == (ret >= 0), (r.stderr, ret)

    @precondition(lambda self: self.twin.k.modules.modules)
    @rule(data=st.data())
    def rmmod(self, data) -> None:
        name = data.draw(st.sampled_from(sorted(self.twin.k.modules.modules)))
        r, pid = self._run(f"exec rmmod {name}")
        busy = self.twin.k.modules.get(name).refcnt > 0
        if not busy:
            with self.twin.caller(pid, "rmmod"):
                assert self.twin.k.delete_module(name) == 0
        assert (r.returncode, r.stderr) == ((1, f"rmmod: ERROR: Module {name} is in use\n") if busy else (0, ""))

    @rule(data=st.data(), value=st.sampled_from(VALUES),
          attr=st.sampled_from(["enabled", "force", "transition", "replace"]))
    def echo_to_patch(self, data, value: str, attr: str) -> None:
        patches = self._patches() or ["nonexistent"]
        patch = data.draw(st.sampled_from(patches))
        rel = f"sys/kernel/livepatch/{patch}/{attr}"
        self._echo(rel, value)

    @rule(value=st.sampled_from(VALUES))
    def echo_ftrace_enabled(self, value: str) -> None:
        self._echo("proc/sys/kernel/ftrace_enabled", value)

    @precondition(lambda self: self.twin.k.modules.get("test_klp_callbacks_demo") is not None)
    @rule(value=st.sampled_from(VALUES))
    def echo_param(self, value: str) -> None:
        self._echo("sys/module/test_klp_callbacks_demo/parameters/pre_patch_ret", value)

    def _echo(self, rel: str, value: str) -> None:
        path = self.mount / rel
        r, pid = self._run(f"echo {value!r} > {path}" if value else f"echo -n '' > {path}")
        data = (value + "\n").encode() if value else b""
        with self.twin.caller(pid, "bash") as task:
            code, at_open = self.twin.write(rel, data, task)
        if code == 0:
            expected = ""
        elif at_open:
            expected = f"bash: line 1: {path}: {_errno_text(code)}\n"
        else:
            expected = f"bash: line 1: echo: write error: {_errno_text(code)}\n"
        assert r.stderr == expected, (rel, value, r.stderr, expected)

    @rule(rel=st.sampled_from(["proc/cmdline", "proc/sys/kernel/ftrace_enabled", "proc/sys/kernel/tainted"]))
    def cat(self, rel: str) -> None:
        r, pid = self._run(f"exec cat {self.mount / rel}")
        with self.twin.caller(pid, "cat") as task:
            content, code = self.twin.read(rel, task)
        assert r.stdout.encode() == (content or b"") and r.returncode == (0 if code == 0 else 1)

    @invariant()
    def trees_identical(self) -> None:
        assert live_dump(self.mount) == self.twin.dump()

    @invariant()
    def logs_identical(self) -> None:
        assert live_log(self.mount) == [r.text for r in self.twin.k.printk.records]
