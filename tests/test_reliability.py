"""The reliability suite: hostile writes, a crowd of shell writers, a stopped
daemon, a hostile script under ``livefs run``; and the host as it was before
all of it (a killed daemon and a killed ``livefs run`` are test_host_safety's).  Bounded in time (about a minute).  ``pytest -s`` shows
the figures.

The tests run in file order: the last one compares the host with the picture
taken before the first.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livefs.tools import tools_dir

from conftest import RUN_MARK, daemon_pid, livefs_cli, sh

HERE = Path(__file__).parent
LP = "test_klp_livepatch"
FIGURES: dict[str, object] = {}
# host sysctls a test script might aim at; none may move
SYSCTLS = ("ftrace_enabled", "tainted", "dmesg_restrict", "kptr_restrict", "modules_disabled", "panic_on_warn",
           "panic", "printk", "sysrq", "hostname")


def host_picture(ours: Path) -> dict[str, object]:
    """The host's state; of livefs mounts only those under ``ours`` (this
    run's temporary directories): any other is another run's."""
    mounts = sorted(" ".join(line.split()[:3]) for line in Path("/proc/self/mounts").read_text().splitlines()
                    if line.split()[2] != "fuse.livefs" or line.split()[1].startswith(f"{ours}/"))
    sysctls = {}
    for name in SYSCTLS:
        try:
            sysctls[name] = Path("/proc/sys/kernel", name).read_text()
        except OSError as exc:
            sysctls[name] = exc.strerror
    lib_modules = []
    for dirpath, dirnames, filenames in os.walk("/lib/modules"):
        if dirpath.count("/") > 4:
            dirnames[:] = []
        lib_modules += [(os.path.join(dirpath, n), os.lstat(os.path.join(dirpath, n)).st_mtime_ns)
                        for n in dirnames + filenames]
    return {"mounts": mounts, "sys/kernel": sorted(os.listdir("/sys/kernel")), "sysctls": sysctls,
            "lib/modules": sorted(lib_modules), "sys/module": sorted(os.listdir("/sys/module"))}


@pytest.fixture(scope="module")
def host_before(tmp_path_factory):
    return host_picture(tmp_path_factory.getbasetemp())


def test_picture_of_the_host(host_before):
    """Taken first, compared last (test_the_host_is_as_it_was)."""
    assert host_before["mounts"] and host_before["sys/kernel"]


@pytest.fixture
def loaded(mnt, tmp_path):
    mods = tmp_path / "m"
    assert livefs_cli("modules", "export", str(mods)).returncode == 0
    env = {"LIVEFS_ROOT": str(mnt), "PATH": f"{tools_dir()}:{os.environ['PATH']}"}
    r = sh(f"insmod {mods}/test_klp_callbacks_demo.ko && insmod {mods}/{LP}.ko", env=env)
    assert r.returncode == 0, r.stderr
    return mnt, mods, env


def test_hostile_writes_leave_the_tree_as_it_was_when_refused(loaded):
    mnt, _, _ = loaded
    r = subprocess.run([sys.executable, str(HERE / "hostile_writer.py"), str(mnt), "20261202", "150"],
                       capture_output=True, text=True, timeout=120)  # a hung request fails here
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    FIGURES["hostile writes"] = figures
    assert figures["changed_on_failure"] == []
    assert set(figures["errno"]) <= {"ok", "EINVAL", "ENOENT", "EBUSY", "EPERM", "ESRCH", "ENOEXEC", "EEXIST"}, figures
    assert figures["refused"] > 50 and figures["tried"] >= 140, figures
    assert (mnt / f"sys/kernel/livepatch/{LP}/transition").read_text() == "0\n"


# each writer: a loop body, and the failures it may meet (anything else is a bug)
WRITERS = {
    "reader": ("cat $lp/enabled $lp/transition $m/proc/cmdline $m/proc/self/patch_state >/dev/null",
               ()),
    "bad-enabled": ("echo 2 > $lp/enabled", ("write error: Invalid argument",)),
    "force": ("echo 0 > $lp/force", ()),
    "bad-param": ("echo bad > $m/sys/module/test_klp_callbacks_demo/parameters/pre_patch_ret",
                  ("write error: Invalid argument",)),
    "kmsg": ("echo crowd $i > $m/dev/kmsg; cat $m/proc/sys/kernel/tainted >/dev/null", ()),
    "ftrace": ("echo 0 > $m/proc/sys/kernel/ftrace_enabled; echo 1 > $m/proc/sys/kernel/ftrace_enabled",
               ("write error: Device or resource busy",)),
    "tracer": ("echo function > $m/sys/kernel/tracing/current_tracer; "
               "echo nop > $m/sys/kernel/tracing/current_tracer", ()),
    "replace": ("modprobe test_klp_atomic_replace replace=0 && "
                "echo 0 > $m/sys/kernel/livepatch/test_klp_atomic_replace/enabled && "
                "while [[ $(cat $m/sys/kernel/livepatch/test_klp_atomic_replace/transition 2>/dev/null) == 1 ]];"
                " do sleep 0.05; done; rmmod test_klp_atomic_replace", ()),
}
CROWD_SECONDS = 5


def test_eight_concurrent_shell_writers(loaded, tmp_path):
    mnt, mods, env = loaded
    assert len(WRITERS) == 8
    procs = {}
    for name, (body, _) in WRITERS.items():
        loop = (f"m={mnt}; lp=$m/sys/kernel/livepatch/{LP}; i=0; end=$((SECONDS+{CROWD_SECONDS})); "
                f"while ((SECONDS < end)); do {body}; i=$((i+1)); done; echo $i")
        procs[name] = subprocess.Popen(["bash", "-c", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, cwd=mods, env=dict(os.environ, LC_ALL="C", **env))
    iterations, unexpected = {}, []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=CROWD_SECONDS + 60)  # a stuck command fails here
        iterations[name] = int(out.split()[-1])
        allowed = WRITERS[name][1]
        unexpected += [f"{name}: {line}" for line in err.splitlines() if not any(a in line for a in allowed)]
    FIGURES["concurrent writers"] = {"writers": len(procs), "seconds": CROWD_SECONDS, "iterations": iterations,
                                     "unexpected errors": len(unexpected)}
    assert unexpected == []
    assert all(n > 0 for n in iterations.values()), iterations
    lp = mnt / f"sys/kernel/livepatch/{LP}"
    assert ((lp / "enabled").read_text(), (lp / "transition").read_text()) == ("1\n", "0\n")
    assert (mnt / "proc/sys/kernel/ftrace_enabled").read_text() == "1\n"


def stop(pid: int) -> None:
    """SIGSTOP, and wait until every thread has stopped: one still running
    could take a request off /dev/fuse, and then its caller waits for the answer."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
            states.append(raw[raw.rindex(b")") + 2:][:1])
        if all(state == b"T" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"daemon {pid} did not stop: {states}")


def test_stopped_daemon(mnt):
    pid = daemon_pid(mnt)
    release = mnt / "sys/kernel/debug/livefs/release"
    # the path is walked once first: the kernel caches entries (ENTRY_TIMEOUT_S),
    # so each caller below waits on a request of its own; two first lookups of
    # one name share one request (d_alloc_parallel), which only its owner can abandon
    release.read_text()
    stop(pid)
    try:
        waiting = subprocess.Popen(["cat", str(release)], stdout=subprocess.PIPE, text=True)
        doomed = subprocess.Popen(["cat", str(release)], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        assert waiting.poll() is None and doomed.poll() is None  # both wait for the daemon
        doomed.kill()
        assert doomed.wait(2) == -signal.SIGKILL  # a caller waiting on a stopped daemon can still be killed
        r = livefs_cli("status", "--mount", str(mnt), timeout=10)
        assert (r.returncode, r.stderr) == (1, f"livefs: {mnt}: the livefs daemon (pid {pid}) is stopped; "
                                               f"continue it with kill -CONT {pid}, or run livefs umount {mnt}\n")
    finally:
        os.kill(pid, signal.SIGCONT)
    out, _ = waiting.communicate(timeout=5)
    assert out.startswith(("6.", "7.")) and waiting.returncode == 0
    assert livefs_cli("status", "--mount", str(mnt)).returncode == 0
    FIGURES.setdefault("faults injected", []).append("SIGSTOP/SIGCONT of the daemon, SIGKILL of a waiting caller")


def test_umount_of_a_stopped_daemon(require_fuse, tmp_path):
    target = tmp_path / "stopped"
    target.mkdir()
    assert livefs_cli("mount", "--cpus", "1", str(target)).returncode == 0
    stop(daemon_pid(target))
    start = time.monotonic()
    r = livefs_cli("umount", str(target), timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start < 5
    assert not any(f" {target} " in line for line in Path("/proc/self/mounts").read_text().splitlines())
    FIGURES.setdefault("faults injected", []).append("livefs umount of a stopped daemon")


HOSTILE_SCRIPT = r"""
set +e
echo 0 > /proc/sys/kernel/ftrace_enabled
echo 64 > /proc/sys/kernel/tainted
echo 1 > /proc/sys/kernel/panic_on_warn
echo 0 > /proc/sys/kernel/dmesg_restrict
echo evil > /proc/sys/kernel/hostname
touch /sys/kernel/livefs-was-here /lib/modules/livefs-was-here
mkdir -p /lib/modules/$(uname -r)/build/livefs-was-here
insmod /nonexistent.ko
/sbin/insmod /nonexistent.ko
modprobe test_klp_livepatch
echo reboot > /sys/kernel/debug/livefs/reboot
umount -l /proc
umount -l /sys/kernel
echo done
"""


def test_hostile_script_under_run(require_fuse):
    r = livefs_cli("run", "--", "bash", "-c", HOSTILE_SCRIPT, timeout=120)
    assert r.returncode == 0 and r.stdout.endswith("done\n"), r.stderr
    refused = [line for line in r.stderr.splitlines() if line.strip()]
    FIGURES["hostile script under livefs run"] = {"refusals": len(refused)}
    assert any(re.search(r"panic_on_warn: (Permission denied|Read-only file system)", line) for line in refused)
    assert any("hostname: " in line for line in refused)


def test_the_host_is_as_it_was(host_before, tmp_path_factory):
    after = host_picture(tmp_path_factory.getbasetemp())
    leftovers = {key: (host_before[key], after[key]) for key in after if after[key] != host_before[key]}
    mine = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_livefs_process(p)]
    FIGURES["leftovers"] = {"host changes": len(leftovers), "livefs processes": len(mine)}
    print("\nreliability figures:\n" + json.dumps(FIGURES, indent=1))
    assert leftovers == {}
    assert mine == []


def _is_livefs_process(proc: Path) -> bool:
    """A daemon or namespace helper that this test run started (its
    environment carries the run's mark)."""
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        if not (b"--foreground" in argv or b"livefs.runtime.namespace" in argv):
            return False
        mark = f"{RUN_MARK}={os.environ[RUN_MARK]}".encode()
        return mark in (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return False

