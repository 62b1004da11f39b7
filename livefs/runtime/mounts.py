"""Starting, finding and stopping mount daemons from the command line."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .paths import PathError, pid_alive, state_dir

READY_TIMEOUT_S = 20.0


class MountError(Exception):
    pass


def _state(mountpoint: Path) -> Path:
    key = hashlib.sha1(str(canonical(mountpoint)).encode()).hexdigest()[:16]
    try:
        return state_dir() / key
    except PathError as exc:
        raise MountError(str(exc)) from None


FSNAME, FSTYPE = "livefs", "fuse.livefs"


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mount_table() -> list[tuple[str, str, str]]:
    """(source, target, fstype) of every mount, in mount order."""
    try:
        with open("/proc/self/mounts") as f:
            return [(_unescape(fields[0]), _unescape(fields[1]), fields[2])
                    for fields in (line.split() for line in f) if len(fields) >= 3]
    except OSError:
        return []


def canonical(path: Path, table: list[tuple[str, str, str]] | None = None) -> Path:
    """The absolute path of ``path`` without looking at ``path`` itself when it
    is a mount point: a look (realpath's lstat) would be a request to a daemon
    that may be stopped or gone.  A mount point is never a symlink: the mount
    table holds resolved paths."""
    path = Path(os.path.abspath(path))
    near = Path(os.path.realpath(path.parent)) / path.name
    if any(target == str(near) for _, target, _ in (_mount_table() if table is None else table)):
        return near
    return Path(os.path.realpath(path))


def mount_entry(path: Path) -> tuple[str, str] | None:
    """(source, fstype) of the topmost mount at ``path``, or None."""
    table = _mount_table()
    target = str(canonical(path, table))
    found = None
    for source, where, fstype in table:
        if where == target:
            found = (source, fstype)
    return found


def is_mounted(path: Path) -> bool:
    return mount_entry(path) is not None


def is_livefs_mount(path: Path) -> bool:
    """The mount table says livefs mounted it (source and type as serve() sets them)."""
    return mount_entry(path) == (FSNAME, FSTYPE)


def is_livefs(path: Path) -> bool:
    """A livefs mount whose daemon answers (sys/kernel/livepatch: any user may look)."""
    try:
        return is_livefs_mount(path) and (path / "sys/kernel/livepatch").is_dir()
    except OSError:
        return False


def check_alive(path: Path) -> None:
    """Raise the user-facing error for a livefs mount whose daemon is gone or wedged."""
    if not is_livefs_mount(path):
        raise MountError(f"{path}: not a livefs mount")
    pid = _daemon_pid(_state(path), path)
    if pid is not None and _stopped(pid):  # a look through the mount would wait for it forever
        raise MountError(f"{path}: the livefs daemon (pid {pid}) is stopped; "
                         f"continue it with kill -CONT {pid}, or run livefs umount {path}")
    try:
        os.stat(path / "sys/kernel/livepatch")
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            raise MountError(f"{path}: the livefs daemon is gone; run livefs umount {path}") from None
        raise MountError(f"{path}: {exc.strerror}") from None


def check_mountpoint(path: Path) -> None:
    if is_livefs_mount(path):
        check_alive(path)
        raise MountError(f"{path}: livefs is already mounted there")
    if not path.exists():
        raise MountError(f"{path}: no such directory")
    if not path.is_dir():
        raise MountError(f"{path}: not a directory")
    if is_mounted(path):
        raise MountError(f"{path}: something is already mounted there")
    if any(path.iterdir()):
        raise MountError(f"{path}: directory is not empty")


def fuse_device_problem() -> str | None:
    """Why this process cannot open /dev/fuse, or None."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing: load the fuse module (modprobe fuse) or use a FUSE-capable machine"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        mode = Path("/dev/fuse").stat().st_mode & 0o777
        return (f"/dev/fuse is not open to you (mode {mode:04o}); distributions ship it 0666 "
                "(as root: chmod 0666 /dev/fuse)")
    return None


def start_daemon(mountpoint: Path, model_args: list[str]) -> int:
    """Mount in a background daemon (``model_args``: the model options of
    ``livefs mount``); return its pid once the mount answers."""
    problem = fuse_device_problem()
    if problem:
        raise MountError(problem)
    check_mountpoint(mountpoint)
    state = _state(mountpoint)
    state.mkdir(parents=True, exist_ok=True)
    log = open(state / "daemon.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "livefs", "mount", "--foreground", *model_args, str(mountpoint.resolve())],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MountError(f"mount daemon exited with {proc.returncode}:\n"
                             + (state / "daemon.log").read_text(errors="replace"))
        if is_livefs(mountpoint):
            (state / "pid").write_text(f"{proc.pid}\n")
            (state / "mountpoint").write_text(str(mountpoint.resolve()))
            return proc.pid
        time.sleep(0.02)
    proc.kill()
    raise MountError(f"mount at {mountpoint} did not come up within {READY_TIMEOUT_S:.0f} s")


def _daemon_pid(state: Path, mountpoint: Path) -> int | None:
    """The pid in the state record, if that process is still our daemon for
    this mount point (a pid may have been reused since)."""
    try:
        pid = int((state / "pid").read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    ours = b"livefs" in argv and b"--foreground" in argv and os.fsencode(str(canonical(mountpoint))) in argv
    return pid if ours else None


def fusermount() -> str:
    """libfuse 3's fusermount3, or the plain name (libfuse 2's, or fuse3's link)."""
    return shutil.which("fusermount3") or "fusermount"


def stop_daemon(mountpoint: Path, timeout_s: float = 10.0) -> None:
    state = _state(mountpoint)
    pid = _daemon_pid(state, mountpoint)
    entry = mount_entry(mountpoint)
    if entry is not None and entry != (FSNAME, FSTYPE):
        raise MountError(f"{mountpoint}: not a livefs mount")
    if entry is None and pid is None:
        _forget(state)
        raise MountError(f"{mountpoint}: not a livefs mount")
    if pid is not None:
        # libfuse's SIGTERM handler ends the loop (blocked readers get EINTR) and unmounts
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # a stopped daemon acts on it too
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if _alive(pid) and _daemon_pid(state, mountpoint) == pid:
            os.kill(pid, signal.SIGKILL)
    if is_livefs_mount(mountpoint):
        rc = subprocess.run([fusermount(), "-u", str(mountpoint)], capture_output=True, text=True)
        if rc.returncode != 0 and is_livefs_mount(mountpoint):
            # ours, with a dead daemon ("Transport endpoint is not connected"): detach it
            subprocess.run([fusermount(), "-u", "-z", str(mountpoint)], capture_output=True)
    _forget(state)
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint}: still mounted after umount")


def _stopped(pid: int) -> bool:
    """Stopped by a signal or a tracer (state T or t in /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return raw[raw.rindex(b")") + 2:][:1] in (b"T", b"t")
    except (OSError, ValueError):
        return False


def _forget(state: Path) -> None:
    for name in ("pid", "mountpoint", "daemon.log"):
        try:
            (state / name).unlink()
        except OSError:
            pass
    try:
        state.rmdir()
    except OSError:
        pass


def _alive(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
