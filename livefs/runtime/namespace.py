"""Inside ``livefs run``: serve the mock, lay it over the real paths, run the command.

This is the first process of a private mount namespace (``unshare --mount
--propagation private``, with ``--user --map-root-user`` for a normal user,
who is then root of a namespace of their own, as in a VM they own).  Every
mount made here is seen by this namespace only; the host's mounts and files
are never touched, and when the last process here ends, the mounts go with it.

Two namespaces are used.  The mount daemon runs in the first, where ``/proc``
is still the real procfs it reads host processes from; the command runs in a
second, copied from the first after the daemon has mounted, where the mock is
bound over ``/sys/kernel``, ``/sys/module``, ``/dev/kmsg`` and ``/proc``.
Everything started here dies with the ``livefs run`` that started it,
whatever killed it: we get SIGTERM when it dies (``PR_SET_PDEATHSIG``), and
as a child subreaper we kill the command's whole tree before we go.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from livefs.catalog import image
from livefs.fs.root import HOST_SYS_KERNEL_ENV
from livefs.runtime import modsyscalls
from livefs.runtime.mounts import is_livefs
from livefs.runtime.reaper import become_subreaper, kill_descendants, open_proc
from livefs.tools import write_tools

MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
CLONE_NEWNS = 0x00020000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
# capabilities a test script has no business using on the host: loading real
# modules, rebooting it, setting its clock, raw I/O, kexec'ing
DROPPED_CAPS = {"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_BOOT": 22, "CAP_SYS_TIME": 25}
READY_TIMEOUT_S = 20.0
VERBOSE_ENV = "LIVEFS_RUN_VERBOSE"  # set by livefs run --verbose
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # where a root shell finds kmod's tools

# (path inside the mount, real path it is laid over)
BINDS = [
    ("sys/kernel", "/sys/kernel"),
    ("sys/module", "/sys/module"),
    ("dev/kmsg", "/dev/kmsg"),
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {source} on {target}")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """preexec_fn: signal this process when the one that started it ends."""
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def drop_host_caps() -> None:
    """preexec_fn for the command: it dies with us and cannot get back the
    capabilities that would let an escaping tool act on the host kernel."""
    die_with_parent()
    for cap in DROPPED_CAPS.values():
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def provide_directory(path: Path, scratch: Path) -> None:
    """Make ``path`` exist in this namespace only, whatever exists on the host."""
    if path.is_dir():
        return
    anchor = path
    while not anchor.exists():
        anchor = anchor.parent
    anchor = anchor.resolve()
    rel = Path(os.path.realpath(path)).relative_to(anchor)
    scratch.mkdir()
    mount("tmpfs", str(scratch), "tmpfs", 0, "mode=0755,size=1m")
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir()
    work.mkdir()
    mount("overlay", str(anchor), "overlay", 0, f"lowerdir={anchor},upperdir={upper},workdir={work}")
    (anchor / rel).mkdir(parents=True, exist_ok=True)


def provide_module_tree(scratch: Path) -> None:
    """This namespace's /lib/modules/$(uname -r): the catalog's stand-ins in
    extra/ with depmod's indexes, so the host's own modprobe finds them by name
    (and loads them into the model: modsyscalls), and build/ (the host's own
    when it has one).  The host's real modules are out of sight here: none of
    them could be loaded anyway."""
    release = os.uname().release
    top = Path(f"/lib/modules/{release}")
    host_build = os.path.realpath(top / "build") if (top / "build").is_dir() else None
    provide_directory(top, scratch / "modules")
    mount("tmpfs", str(top), "tmpfs", 0, "mode=0755,size=16m")
    (top / "build").mkdir()
    if host_build is not None:
        mount(host_build, str(top / "build"), None, MS_BIND, None)
    list(image.export(top / "extra", release, None))
    depmod = shutil.which("depmod", path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))
    if depmod is not None:  # without it modprobe finds nothing, as on a machine without depmod's files
        subprocess.run([depmod, "-a", release], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)


def start_daemon(mnt: Path, log: Path, daemon_args: list[str]) -> subprocess.Popen:
    # the mock goes over /sys/kernel: the daemon serves the host's other entries there
    env = dict(os.environ, **{HOST_SYS_KERNEL_ENV: "/sys/kernel"})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "livefs", "mount", "--foreground", *daemon_args, str(mnt)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent, env=env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace").strip()
            raise RuntimeError(f"the mount daemon exited with {proc.returncode}" + (f": {text}" if text else ""))
        if is_livefs(mnt):
            return proc
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"the mount did not come up within {READY_TIMEOUT_S:.0f} s")


def stop_daemon(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # libfuse's handler unmounts and ends the loop
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def lay_over(mnt: Path, scratch: Path) -> None:
    """The second namespace: the mock at the real paths."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    for inner, real in BINDS:
        mount(str(mnt / inner), real, None, MS_BIND, None)
    provide_module_tree(scratch)
    # last: the real procfs moves aside (into the mount) and the mock's /proc,
    # which links back to it for everything it does not model, takes its place
    mount("/proc", str(mnt / "overlay/hostproc"), None, MS_BIND | MS_REC, None)
    mount(str(mnt / "overlay/proc"), "/proc", None, MS_BIND, None)


def run_command(cmd: list[str], env: dict[str, str], parent: int, proc_fd: int) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        proc = subprocess.Popen(cmd, env=env, preexec_fn=modsyscalls.preexec_installer(theirs, drop_host_caps))
    except OSError as exc:
        print(f"livefs run: {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    finally:
        theirs.close()
    supervise_module_syscalls(ours, proc_fd)

    def forward(signum: int, frame: object) -> None:
        # the livefs run that started us is gone: so is the command
        proc.send_signal(signal.SIGKILL if os.getppid() != parent else signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)
    rc = proc.wait()
    return rc if rc >= 0 else 128 - rc


def command_path(tools: Path, path: str, own_tools: bool) -> str:
    """The command's PATH.  Where module syscalls reach the model (modsyscalls)
    and kmod is installed, the host's own tools do the work, with the sbin
    directories a root shell has (a normal user's PATH lacks them, and inside
    the run they are root); elsewhere the stand-ins come first."""
    dirs = [d for d in (path or "/usr/local/bin:/usr/bin:/bin").split(os.pathsep) if d]
    with_sbin = dirs + [d for d in SBIN if d not in dirs]
    if own_tools and shutil.which("insmod", path=os.pathsep.join(with_sbin)):
        return os.pathsep.join(with_sbin)
    return os.pathsep.join([str(tools), *dirs])


def supervise_module_syscalls(sock: socket.socket, proc_fd: int) -> None:
    """The command's module syscalls go to the model (modsyscalls), or, where
    the kernel cannot hand them over, to nothing but the stand-ins on PATH."""
    sock.settimeout(READY_TIMEOUT_S)
    try:
        listener, err = modsyscalls.recv_fd(sock)
    except OSError as exc:
        listener, err = None, exc.errno or errno.EIO
    finally:
        sock.close()
    if listener is None:
        if os.environ.get(VERBOSE_ENV):
            print(f"livefs run: module syscalls reach only the stand-ins ({os.strerror(err)}: no seccomp user "
                  "notification here)", file=sys.stderr)
        return
    modsyscalls.Supervisor(listener, proc_fd, Path("/sys/kernel/debug/livefs")).start()
    if os.environ.get(VERBOSE_ENV):
        print("livefs run: module syscalls go to the model (seccomp user notification): the host's own kmod "
              "and dmesg are on PATH", file=sys.stderr)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m livefs.runtime.namespace")
    ap.add_argument("--parent", type=int, required=True, help="pid of the livefs run that started us")
    ap.add_argument("--mount", dest="mount_dir", help="an existing livefs mount to use")
    ap.add_argument("--daemon-arg", action="append", default=[], help="passed to livefs mount --foreground")
    ap.add_argument("scratch")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        ap.error("no command")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    # set here, not inherited: entering a user namespace clears it.  SIGTERM,
    # not SIGKILL: we still have the command's tree to end
    die_with_parent(signal.SIGTERM)
    become_subreaper()
    if os.getppid() != args.parent:
        return 1
    proc_fd = open_proc()
    own_tools = modsyscalls.available()  # asked of the real /proc, before the mock's covers it
    scratch = Path(args.scratch)
    mount("tmpfs", str(scratch), "tmpfs", 0, "mode=0755,size=16m")
    tools = scratch / "bin"
    write_tools(tools)
    daemon = None
    try:
        if args.mount_dir:
            mnt = Path(args.mount_dir)
        else:
            mnt = scratch / "mnt"
            mnt.mkdir()
            daemon = start_daemon(mnt, scratch / "daemon.log", args.daemon_arg)
        lay_over(mnt, scratch)
    except (OSError, RuntimeError) as exc:
        print(f"livefs run: {exc}", file=sys.stderr)
        if daemon is not None:
            stop_daemon(daemon)
        return 1
    env = dict(os.environ)
    env["PATH"] = command_path(tools, env.get("PATH", ""), own_tools)
    env["LIVEFS_ROOT"] = "/"
    env["LIVEFS_MOUNT"] = str(mnt)
    try:
        return run_command(args.cmd, env, args.parent, proc_fd)
    finally:
        kill_descendants(proc_fd, exclude=frozenset([daemon.pid]) if daemon else frozenset())
        if daemon is not None:
            stop_daemon(daemon)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
