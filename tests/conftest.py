"""Fixtures: a model kernel in virtual time, and real FUSE mounts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypothesis import settings

from livefs.catalog import find
from livefs.kernel.kernel import Kernel
from livefs.kernel.version import MAINLINE, KernelVersion
from livefs.kernel.printk import KERN_DEBUG
from livefs.kernel.tasks import Task
from livefs.testing.plugin import require_fuse as _require_fuse


# every process this test run starts carries this mark in its environment, so
# that a leftover check counts only our own (another run, or a benchmark, may
# share the machine)
RUN_MARK = "LIVEFS_TEST_RUN"


def pytest_configure(config: pytest.Config) -> None:
    """Our suite runs the deterministic profile unless told otherwise
    (``--hypothesis-profile livefs-thorough`` hunts with random seeds)."""
    os.environ.setdefault(RUN_MARK, f"{os.getpid()}-{time.time_ns()}")
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("livefs-ci")

REPO = Path(__file__).resolve().parents[1]

# Skips that stay skips under CI=true: limits of the platform the suite runs
# on, not of its setup.  Each is a reason a test gives word for word.  Every
# other skip under CI=true is a failure (FUSE missing included: see
# livefs.testing.plugin.require_fuse), so a green CI means the tests ran.
PLATFORM_LIMITS = {
    # the suite run by a normal user: these need root on any Linux
    "mounting a tmpfs needs root",
    "as a normal user there is no host capability to drop",
    "a mount for other users needs root",
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI=true a skip whose reason is not a documented platform limit
    is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason not in PLATFORM_LIMITS:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, and not a documented platform limit: {reason}"


class Machine:
    """A model kernel plus a shell-like user task that makes the syscalls."""

    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel
        self.shell = kernel.task_for(5000, "bash")
        self.mark = kernel.printk.next_seq  # after the boot log (the banner)

    def task(self, comm: str) -> Task:
        return self.k.task_for(self.k.tasks.new_pid(), comm, ppid=self.shell.pid)

    def insmod(self, name: str, args: str = "") -> int:
        with self.k.syscall(self.task("insmod")):
            return self.k.load_module(find(name), args)

    def rmmod(self, name: str) -> int:
        with self.k.syscall(self.task("rmmod")):
            return self.k.delete_module(name)

    def write(self, patch: str, attr: str, data: bytes) -> int:
        p = self.k.livepatch.find_sysfs_patch(patch)
        assert p is not None, f"no patch {patch}"
        with self.k.syscall(self.shell):
            store = {"enabled": self.k.livepatch.enabled_store, "force": self.k.livepatch.force_store}[attr]
            return store(p, data)

    def cat(self, func: str = "cmdline_proc_show", obj: str = "vmlinux", task: Task | None = None) -> str:
        t = task or self.shell
        with self.k.syscall(t):
            return self.k.call(t, obj, func)

    def log(self, since_mark: bool = True, debug: bool = True) -> list[str]:
        """Log lines since the last ``mark()``, as check_result would see them
        (module loader taint lines filtered out)."""
        recs = [r for r in self.k.printk.records if r.seq >= (self.mark if since_mark else 0)]
        return [r.text for r in recs if (debug or r.level != KERN_DEBUG)
                and "taints kernel" not in r.text and "tainting kernel" not in r.text]

    def set_mark(self) -> None:
        self.mark = self.k.printk.next_seq

    def patches(self) -> list[str]:
        return [p.name for p in self.k.livepatch.sysfs_patches]


def _machine(ncpus: int, version: KernelVersion = MAINLINE) -> Machine:
    k = Kernel(ncpus=ncpus, version=version)
    assert k.dyndbg.exec_queries("file kernel/livepatch/* +p\nfunc klp_try_switch_task -p") == 0
    return Machine(k)


@pytest.fixture
def machine() -> Machine:
    """One CPU, busy with the caller: an unblocked transition completes at once."""
    return _machine(1)


@pytest.fixture
def smp() -> Machine:
    """Two CPUs: the second one idles (its idle task is running) or runs a spinner."""
    return _machine(2)


@pytest.fixture
def smp_612() -> Machine:
    """Two CPUs on 6.12, where a spinning task switches in its cond_resched()
    (v6.4-v6.15 only; from v6.16 only a TASK_FREEZABLE sleep switches it)."""
    return _machine(2, KernelVersion.parse("6.12"))


@pytest.fixture
def require_fuse() -> None:
    _require_fuse()


@pytest.fixture
def mnt(require_fuse, tmp_path: Path):
    """A live mount in a fresh directory, torn down afterwards."""
    target = tmp_path / "mnt"
    target.mkdir()
    # one model CPU: an unblocked transition completes inside the triggering write
    subprocess.run([sys.executable, "-m", "livefs", "mount", "--cpus", "1", str(target)], check=True,
                   capture_output=True, text=True)
    try:
        yield target
    finally:
        subprocess.run([sys.executable, "-m", "livefs", "umount", str(target)], capture_output=True)
        subprocess.run(["fusermount", "-u", "-z", str(target)], capture_output=True)


def livefs_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    """The ``livefs`` command of this Python, with its text output."""
    return subprocess.run([sys.executable, "-m", "livefs", *args], capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else dict(os.environ, **env), timeout=timeout)


def sh(script: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env["LC_ALL"] = "C"
    full_env.update(env or {})
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=120)


def pgrep(pattern: str) -> list[int]:
    """Pids whose command line matches ``pattern`` (pgrep -f)."""
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def wait_for(pattern: str, present: bool, timeout: float = 10) -> bool:
    """Poll until a process matching ``pattern`` exists (or none does); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bool(pgrep(pattern)) == present:
            return True
        time.sleep(0.05)
    return False


def mount_table() -> list[tuple[str, str, str, str]]:
    """(source, mount point, fstype, options) of every mount of this process's
    namespace, in mount order, with the table's octal escapes undone: exact
    entries to compare, where a substring test on the whole text would match
    any path that merely contains the one we mean."""
    def unescape(field: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

    return [(unescape(src), unescape(where), fstype, opts)
            for src, where, fstype, opts, *_ in (line.split() for line in Path("/proc/self/mounts").read_text()
                                                 .splitlines())]


def mounted_at(path: Path) -> list[tuple[str, str, str, str]]:
    """The mount-table entries whose mount point is exactly ``path``."""
    return [m for m in mount_table() if m[1] == str(path)]


def daemon_pid(target: Path) -> int:
    """The one mount daemon serving ``target``."""
    pids = pgrep(f"livefs mount --foreground.*{target}")
    assert len(pids) == 1, pids
    return pids[0]
