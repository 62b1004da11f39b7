"""Inside ``livefs run``: lay the mock over the real paths, then exec.

This runs as the first process of a private mount namespace (made by
``unshare --mount --propagation private``), so every mount below is seen by
the command and its children only; the host's mounts and files are never
touched.  Paths that do not exist on the host cannot be bind targets, so
``/lib/modules/<release>/build`` is provided by an overlay whose upper layer
is a tmpfs of this namespace, and ``/proc`` is replaced as a whole by the
mock's view of it (see livefs.fs.hostproc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

MS_BIND = 4096
MS_REC = 16384

# (path inside the mount, real path it is laid over)
BINDS = [
    ("sys/kernel", "/sys/kernel"),
    ("sys/module", "/sys/module"),
    ("dev/kmsg", "/dev/kmsg"),
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    ret = _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                      ctypes.c_ulong(flags), data.encode() if data else None)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def provide_directory(path: Path, scratch: Path) -> None:
    """Make ``path`` exist in this namespace only, whatever exists on the host."""
    if path.is_dir():
        return
    anchor = path
    while not anchor.exists():
        anchor = anchor.parent
    anchor = anchor.resolve()
    rel = Path(os.path.realpath(path)).relative_to(anchor)
    mount("tmpfs", str(scratch), "tmpfs", 0, "mode=0755,size=1m")
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir()
    work.mkdir()
    mount("overlay", str(anchor), "overlay", 0, f"lowerdir={anchor},upperdir={upper},workdir={work}")
    (anchor / rel).mkdir(parents=True, exist_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: python -m livefs.runtime.namespace MOUNT SHIMS SCRATCH -- CMD...", file=sys.stderr)
        return 2
    mnt, shims, scratch, cmd = Path(argv[0]), argv[1], Path(argv[2]), argv[4:]
    for inner, real in BINDS:
        mount(str(mnt / inner), real, None, MS_BIND, None)
    release = os.uname().release
    provide_directory(Path(f"/lib/modules/{release}/build"), scratch)
    # last: the real procfs moves aside (into the mount) and the mock's /proc,
    # which links back to it for everything it does not model, takes its place
    mount("/proc", str(mnt / "overlay/hostproc"), None, MS_BIND | MS_REC, None)
    mount(str(mnt / "overlay/proc"), "/proc", None, MS_BIND, None)
    env = dict(os.environ)
    env["PATH"] = shims + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env["LIVEFS_ROOT"] = "/"
    env["LIVEFS_MOUNT"] = str(mnt)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        print(f"livefs run: {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
