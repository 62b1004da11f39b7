"""Where livefs keeps its mount points and daemon records on the host.

Never inside the installed package, and for a normal user never in /run:
``$LIVEFS_STATE_DIR`` if set, else ``$XDG_RUNTIME_DIR/livefs``, else
``/run/livefs`` for root, else a directory of the user's own under the
temporary directory.  A directory that another user owns, or that others can
write to, is refused: mount points and pid files in it could be swapped.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class PathError(Exception):
    pass


def runtime_dir() -> Path:
    if os.environ.get("LIVEFS_STATE_DIR"):
        base = Path(os.environ["LIVEFS_STATE_DIR"])
    elif os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "livefs"
    elif os.geteuid() == 0:
        base = Path("/run/livefs")
    else:
        base = Path(tempfile.gettempdir()) / f"livefs-{os.geteuid()}"
    return _private(base, 0o755 if os.geteuid() == 0 else 0o700)


def _private(path: Path, mode: int) -> Path:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise PathError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PathError(f"{path}: not a directory")
    if st.st_uid != os.geteuid():
        raise PathError(f"{path}: owned by uid {st.st_uid}, not by you; set LIVEFS_STATE_DIR")
    if st.st_mode & 0o022:
        raise PathError(f"{path}: writable by others; set LIVEFS_STATE_DIR to a private directory")
    return path


def mountpoints_dir() -> Path:
    """Default mount points (``livefs mount`` with no DIR, ``livefs run``'s own)."""
    return _private(runtime_dir() / "mnt", 0o755 if os.geteuid() == 0 else 0o700)


def state_dir() -> Path:
    """One record per mount: daemon pid, mount point, log."""
    return _private(runtime_dir() / "state", 0o700)


def sweep_stale_runs() -> None:
    """Remove ``run-<pid>-*`` scratch directories whose ``livefs run`` died
    without cleaning up (SIGKILL): they are empty on the host, since
    everything mounted on them lived in that run's private namespace."""
    base = mountpoints_dir()
    for entry in base.glob("run-*"):
        parts = entry.name.split("-")
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        if pid_alive(int(parts[1])):
            continue
        try:
            for sub in sorted(entry.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir() and not sub.is_symlink():
                    sub.rmdir()
                else:
                    sub.unlink()
            entry.rmdir()
        except OSError:
            pass


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (it may be a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
