"""livefs acts only on what is its own, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from livefs.kernel.params import parse_bool
from livefs.runtime.paths import mountpoints_dir

from conftest import livefs_cli, pgrep, sh, wait_for


def mounts() -> list[str]:
    return Path("/proc/self/mounts").read_text().splitlines()


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    target = tmp_path / "tmpfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    yield target
    subprocess.run(["umount", str(target)], capture_output=True)


def test_umount_refuses_a_mount_that_is_not_livefs(tmpfs):
    r = livefs_cli("umount", str(tmpfs))
    assert r.returncode == 1
    assert r.stderr == f"livefs: {tmpfs}: not a livefs mount\n"
    assert sum(f" {tmpfs} tmpfs " in m for m in mounts()) == 1


def test_umount_refuses_proc():
    before = [m for m in mounts() if " /proc" in m]
    r = livefs_cli("umount", "/proc")
    assert (r.returncode, r.stderr) == (1, "livefs: /proc: not a livefs mount\n")
    assert [m for m in mounts() if " /proc" in m] == before


def test_dead_daemon_is_reported_not_crashed_on(mnt):
    pid = int(next(p for p in (mountpoints_dir().parent / "state").glob("*/pid")
                   if (p.parent / "mountpoint").read_text() == str(mnt.resolve())).read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    want = f"livefs: {mnt}: the livefs daemon is gone; run livefs umount {mnt}\n"
    for args in (["status", "--mount", str(mnt)], ["mount", str(mnt)], ["run", "--mount", str(mnt), "--", "true"],
                 ["wait", "--mount", str(mnt)]):
        r = livefs_cli(*args)
        assert (r.returncode, r.stderr) == (1, want), args
    assert livefs_cli("umount", str(mnt)).returncode == 0
    assert not any(f" {mnt} " in m for m in mounts())


def test_stale_pid_file_is_not_signalled(tmp_path, monkeypatch):
    """A pid record that names some other process now is never acted on."""
    monkeypatch.setenv("LIVEFS_STATE_DIR", str(tmp_path / "state"))
    from livefs.runtime import mounts as m
    target = tmp_path / "m"
    target.mkdir()
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        state = m._state(target)
        state.mkdir(parents=True)
        (state / "pid").write_text(f"{bystander.pid}\n")
        with pytest.raises(m.MountError, match="not a livefs mount"):
            m.stop_daemon(target, timeout_s=0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_bool_params_parse_as_kstrtobool():
    assert [parse_bool(t) for t in ("Y\n", "n", "1", "0\n", "on", "off", "true")] == \
        [True, False, True, False, True, False, True]
    for bad in ("", "\n", "x", "2", "-1", "o"):
        assert parse_bool(bad) is None, repr(bad)


def test_empty_write_to_bool_param_is_einval(mnt, tmp_path):
    from livefs.tools import tools_dir
    env = {"LIVEFS_ROOT": str(mnt), "PATH": f"{tools_dir()}:{os.environ['PATH']}"}
    assert livefs_cli("modules", "export", str(tmp_path / "m"), "test_klp_callbacks_busy").returncode == 0
    r = sh(f"insmod {tmp_path}/m/test_klp_callbacks_busy.ko block_transition=", env=env)
    assert r.returncode == 1 and r.stderr.endswith("Invalid parameters\n"), r.stderr  # kmod's word for EINVAL
    r = sh(f"insmod {tmp_path}/m/test_klp_callbacks_busy.ko block_transition", env=env)
    assert r.returncode == 0, r.stderr
    param = mnt / "sys/module/test_klp_callbacks_busy/parameters/block_transition"
    assert param.read_text() == "Y\n"
    r = sh(f"echo > {param}")
    assert "write error: Invalid argument" in r.stderr
    assert param.read_text() == "Y\n"
    r = sh(f"echo N > {param}")
    assert r.returncode == 0 and param.read_text() == "N\n"


def test_run_drops_host_capabilities(require_fuse):
    r = livefs_cli("run", "--", "bash", "-c", "grep CapBnd /proc/self/status")
    assert r.returncode == 0, r.stderr
    bounding = int(r.stdout.split()[1], 16)
    for cap in (16, 17, 22, 25):  # SYS_MODULE, SYS_RAWIO, SYS_BOOT, SYS_TIME
        assert not bounding & (1 << cap), cap


REBOOT_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
# reboot(2) checks CAP_SYS_BOOT before its magic numbers: bad magic gives
# EINVAL to a capable caller and EPERM to one without the capability
ret = libc.syscall(169, 0, 0, 0, 0)
print(os.strerror(ctypes.get_errno()) if ret else "rebooted?")
"""


def test_command_cannot_use_host_boot_capability(require_fuse):
    if os.geteuid() != 0:
        pytest.skip("as a normal user there is no host capability to drop")
    outside = subprocess.run([sys.executable, "-c", REBOOT_PROBE], capture_output=True, text=True)
    assert outside.stdout == "Invalid argument\n"
    r = livefs_cli("run", "--", sys.executable, "-c", REBOOT_PROBE)
    assert (r.returncode, r.stdout) == (0, "Operation not permitted\n"), r.stderr


# a command with a job in the background: the job is reparented when its
# shell dies, and PR_SET_PDEATHSIG alone would not end it
BACKGROUNDED = ["bash", "-c", "sleep 313.4 & sleep 313.5"]


def test_sigkill_of_run_leaves_nothing(require_fuse):
    proc = subprocess.Popen([sys.executable, "-m", "livefs", "run", "--", *BACKGROUNDED])
    try:
        _check_sigkill_leaves_nothing(proc)
    finally:
        proc.kill()
        subprocess.run(["pkill", "-KILL", "-f", "sleep 313"])


def test_background_jobs_end_with_the_run(require_fuse):
    r = livefs_cli("run", "--", "bash", "-c", "sleep 313.7 & echo started")
    try:
        assert (r.returncode, r.stdout) == (0, "started\n"), r.stderr
        assert wait_for("sleep 313.7", present=False, timeout=2), "a background job outlived livefs run"
    finally:
        subprocess.run(["pkill", "-KILL", "-f", "sleep 313.7"])


def test_sigkill_of_the_namespace_runner_leaves_nothing(require_fuse):
    """The runner itself killed: livefs run, a subreaper, ends what it left."""
    proc = subprocess.Popen([sys.executable, "-m", "livefs", "run", "--", "bash", "-c", "sleep 313.8 & sleep 313.9"])
    try:
        assert wait_for("^sleep 313.9", present=True, timeout=20)
        runner = pgrep(f"--parent {proc.pid}")
        assert len(runner) == 1, runner
        os.kill(runner[0], signal.SIGKILL)
        assert proc.wait(10) == 128 + signal.SIGKILL
        assert wait_for("sleep 313.[89]", present=False), "the command or its job outlived the runner"
        assert wait_for(f"run-{proc.pid}-", present=False), "the daemon outlived the runner"
    finally:
        proc.kill()
        subprocess.run(["pkill", "-KILL", "-f", "sleep 313"])


def _check_sigkill_leaves_nothing(proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    run_dirs = []
    while time.monotonic() < deadline and not run_dirs:
        run_dirs = list(mountpoints_dir().glob(f"run-{proc.pid}-*"))
        time.sleep(0.05)
    assert run_dirs, "livefs run made no scratch directory"
    wait_for("^sleep 313.5", present=True, timeout=max(0.0, deadline - time.monotonic()))  # the command runs
    assert pgrep(f"--parent {proc.pid}"), "no namespace runner seen"
    proc.kill()
    proc.wait()
    assert wait_for(f"run-{proc.pid}-", present=False), "the daemon or the runner outlived livefs run"
    assert wait_for("sleep 313.[45]", present=False, timeout=2), "the command or its background job outlived livefs run"
    assert not [m for m in mounts() if f"run-{proc.pid}-" in m]
    # the empty scratch directory is swept by the next livefs run
    assert livefs_cli("run", "--", "true").returncode == 0
    assert not list(mountpoints_dir().glob(f"run-{proc.pid}-*"))


def test_blocked_kmsg_reader_dies_at_once_on_sigkill(mnt):
    reader = subprocess.Popen(["cat", str(mnt / "dev/kmsg")], stdout=subprocess.DEVNULL)
    time.sleep(0.5)  # past the backlog: now it blocks waiting for a record
    start = time.monotonic()
    reader.kill()
    reader.wait(5)
    assert time.monotonic() - start < 1.0
    assert reader.returncode == -signal.SIGKILL


KMSG_EINTR_PROBE = """
import ctypes, errno, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGALRM, lambda *a: None)
signal.siginterrupt(signal.SIGALRM, True)
fd = libc.open(sys.argv[1].encode(), 0)
buf = ctypes.create_string_buffer(8192)
signal.setitimer(signal.ITIMER_REAL, 1.0)  # the backlog is read by then; the read blocks
while True:
    n = libc.read(fd, buf, 8192)  # libc, not os.read: Python would retry after EINTR
    if n < 0:
        print(errno.errorcode[ctypes.get_errno()])
        break
"""


def test_blocked_kmsg_read_ends_with_eintr_on_a_caught_signal(mnt):
    r = subprocess.run([sys.executable, "-c", KMSG_EINTR_PROBE, str(mnt / "dev/kmsg")], capture_output=True,
                       text=True, timeout=10)
    assert r.stdout == "EINTR\n", r.stderr


def test_umount_with_a_blocked_reader_is_quick(require_fuse, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    assert livefs_cli("mount", "--cpus", "1", str(target)).returncode == 0
    reader = subprocess.Popen(["cat", str(target / "dev/kmsg")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        start = time.monotonic()
        r = livefs_cli("umount", str(target))
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - start < 2.0
        reader.wait(5)
        assert not any(f" {target} " in m for m in mounts())
    finally:
        reader.kill()


@pytest.fixture
def public_mnt(require_fuse):
    """A root mount (allow_other) in a directory that other users can reach."""
    if os.geteuid() != 0:
        pytest.skip("a mount for other users needs root")
    import shutil
    import tempfile
    public = Path(tempfile.mkdtemp(prefix="livefs-public-"))
    public.chmod(0o755)
    target = public / "mnt"
    target.mkdir()
    assert livefs_cli("mount", "--cpus", "1", str(target)).returncode == 0
    try:
        yield target
    finally:
        livefs_cli("umount", str(target))
        shutil.rmtree(public, ignore_errors=True)


def as_nobody(script: str) -> subprocess.CompletedProcess:
    return sh(f"setpriv --reuid=65534 --regid=65534 --clear-groups bash -c {script!r}")


def test_a_user_reads_their_own_patch_state_and_not_others(public_mnt):
    r = as_nobody(f"stat -c '%a %u' {public_mnt}/overlay/proc/$$/patch_state; cat {public_mnt}/overlay/proc/$$/patch_state")
    assert r.stdout == "400 65534\n-1\n", r.stderr
    r = as_nobody(f"cat {public_mnt}/overlay/proc/1/patch_state")
    assert r.stderr.endswith("Permission denied\n") and r.stdout == ""


def test_debugfs_is_root_only(public_mnt):
    debug = public_mnt / "sys/kernel/debug"
    assert sh(f"stat -c '%a %u' {debug}").stdout == "700 0\n"
    r = as_nobody(f"ls {debug}")
    assert "Permission denied" in r.stderr and r.stdout == ""
    r = as_nobody(f"cat {debug}/dynamic_debug/control")
    assert "Permission denied" in r.stderr and r.stdout == ""
    assert sh(f"head -c 0 {debug}/dynamic_debug/control").returncode == 0  # root still reads it


def test_host_sysctls_are_never_written_through_the_mock(public_mnt):
    node = public_mnt / "overlay/proc/sys/kernel/ns_last_pid"
    host = Path("/proc/sys/kernel/ns_last_pid")
    assert node.stat().st_mode & 0o222 == 0
    assert host.stat().st_mode & 0o222  # the host's own file is writable: the mock's copy is not
    for who in (sh, as_nobody):
        r = who(f"echo 1 > {node}")
        assert r.returncode == 1 and "Permission denied" in r.stderr, r.stderr


def test_proc_overlay_fails_loudly_instead_of_dropping_host_processes(monkeypatch):
    """A host /proc that cannot be read is an error for the request, never an empty /proc."""
    from livefs.fs import hostproc
    from livefs.fs.root import build_root
    from livefs.fs.tree import Request, resolve
    from livefs.kernel.kernel import Kernel

    k = Kernel(ncpus=1)
    req = Request(k, k.task_for(5000, "bash"))
    proc = resolve(build_root("/mnt/livefs"), req, "overlay/proc")
    assert any(name == str(os.getpid()) for name, _ in proc.listing(req))
    calls = []

    def flaky(path):
        calls.append(path)
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(hostproc.os, "listdir", flaky)
    with pytest.raises(OSError) as info:
        list(proc.listing(req))
    assert info.value.errno == 12
    assert len(calls) == hostproc.HOST_RETRIES


def test_tainted_only_grows_and_only_for_root(public_mnt):
    """proc_taint(): CAP_SYS_ADMIN to write, a number (strtoul base 0), OR-ed in."""
    node = public_mnt / "proc/sys/kernel/tainted"
    assert sh(f"stat -c '%a %u' {node}").stdout == "644 0\n"
    before = int(node.read_text())
    r = as_nobody(f"echo 64 > {node}")  # proc_sys_permission() refuses the open
    assert r.stderr.endswith("tainted: Permission denied\n") and int(node.read_text()) == before
    for bad in ("x", "-1", "64x", "''"):
        r = sh(f"echo {bad} > {node}")
        assert "write error: Invalid argument" in r.stderr, bad
    assert int(node.read_text()) == before
    assert sh(f"echo 0x40 > {node}").returncode == 0  # TAINT_USER
    assert int(node.read_text()) == before | 64
    assert sh(f"echo 0 > {node}").returncode == 0  # accepted, clears nothing
    assert int(node.read_text()) == before | 64
    assert sh(f"echo {1 << 40} > {node}").returncode == 0  # no such flag: ignored
    assert int(node.read_text()) == before | 64


SHIM = "import sys; from livefs.shim import main; sys.exit(main(sys.argv[1], sys.argv[2:]))"


def test_proc_modules_hides_addresses_from_users(public_mnt):
    r = subprocess.run([sys.executable, "-c", SHIM, "modprobe", "test_klp_livepatch"], capture_output=True,
                       text=True, env={**os.environ, "LIVEFS_ROOT": str(public_mnt)})
    assert r.returncode == 0, r.stderr
    line = sh(f"cat {public_mnt}/proc/modules").stdout
    name, size, refs, users, state, addr, flags = line.split()
    assert (name, refs, users, state, flags) == ("test_klp_livepatch", "1", "-", "Live", "(OEK)"), line
    assert int(addr, 16) != 0 and len(addr) == 18
    theirs = as_nobody(f"cat {public_mnt}/proc/modules").stdout
    assert theirs == line.replace(addr, "0x0000000000000000")


@pytest.fixture
def public_shim():
    """The stand-ins, importable by any user (the checkout may be private)."""
    import shutil
    import livefs
    where = Path(tempfile.mkdtemp(prefix="livefs-shim-"))
    shutil.copytree(Path(livefs.__file__).parent, where / "livefs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (where / "tool.py").write_text(SHIM + "\n")
    for path in [where, *where.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_lsmod_and_dmesg_as_a_user(public_mnt, public_shim):
    def tool(name: str, *args: str) -> subprocess.CompletedProcess:
        return as_nobody(f"LIVEFS_ROOT={public_mnt} /usr/bin/python3 {public_shim}/tool.py {name} {' '.join(args)}")

    r = tool("lsmod")
    assert (r.returncode, r.stdout) == (0, "Module                  Size  Used by\n"), r.stderr
    restricted = Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() != "0"
    r = tool("dmesg")
    if restricted:  # the host would refuse this user its log: so does the mock
        assert (r.returncode, r.stdout, r.stderr) == (1, "", "dmesg: read kernel buffer failed: Operation not permitted\n")
    else:
        assert r.returncode == 0 and "Linux version" in r.stdout, r.stderr
    r = tool("dmesg", "-C")
    assert (r.returncode, r.stderr) == (1, "dmesg: klogctl failed: Operation not permitted\n")
    assert sh(f"cat {public_mnt}/sys/kernel/debug/livefs/kmsg_clear_seq").stdout == "0\n"
