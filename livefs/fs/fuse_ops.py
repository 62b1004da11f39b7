"""The FUSE adapter (mfusepy): FUSE requests in, tree operations out, errno back.

It knows nothing of livepatch.  Every request runs inside the model owner as a
syscall of the calling process (``owner.syscall(pid, fn)``); the only thing done
outside it is waiting for a blocking ``/dev/kmsg`` read, so one waiting reader
never stalls the mount (:mod:`livefs.fs.fuse_session` serves those reads in a
thread of their own and everything else in the loop's thread).

What the kernel may cache: directory entries, for ENTRY_TIMEOUT_S.  Every
request that reaches us names its path and is resolved against the model
afresh, and attributes are never cached (every stat(2) asks), so an entry the
model has removed is gone at once for ``[[ -e ]]``, ``stat``, ``open`` and
``ls``; the cached dentry only spares the path walk its LOOKUPs.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import stat
import time
from typing import Any, Callable, Protocol

from . import fuse_session
from .fuse_session import fuse

log = logging.getLogger("livefs")

INTERRUPT_POLL_S = 0.05
ENTRY_TIMEOUT_S = 1.0
# the options every livefs mount is made with (see the module docstring); an
# O_TRUNC open comes as one OPEN (libfuse 3 asks for that by default)
MOUNT_OPTIONS: dict[str, Any] = dict(direct_io=True, attr_timeout=0, entry_timeout=ENTRY_TIMEOUT_S,
                                     negative_timeout=0, fsname="livefs", subtype="livefs")
if not fuse_session.LIBFUSE3:
    MOUNT_OPTIONS["atomic_o_trunc"] = True

from .tree import Attr, Dir, Request, Stream, Symlink, nlink, resolve


DEFAULT_POLLMASK = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM


class Owner(Protocol):
    def syscall(self, pid: int, fn: Callable[[Request], Any], uid: int = 0) -> Any: ...
    def on_next_record(self, wake: Callable[[], None]) -> None: ...
    def wait_for_log(self, timeout: float) -> bool: ...
    @property
    def stopping(self) -> bool: ...


def _err(code: int) -> fuse.FuseOSError:
    return fuse.FuseOSError(code)


class LivefsOperations(fuse.Operations):
    use_ns = True
    # no xattr or flush handlers: the kernel then stops asking (a round trip
    # saved per write and per close)
    getxattr = None
    listxattr = None
    setxattr = None
    removexattr = None
    flush = None

    def __init__(self, root: Dir, owner: Owner) -> None:
        self.root = root
        self.owner = owner
        self.handles: dict[int, Any] = {}
        self.nonblock: dict[int, bool] = {}
        self.streams: set[int] = set()
        self.next_fh = 1
        self.mounted_at = time.time_ns()
        # whoever serves the mount is root of the model's world (a normal
        # user's own mount, like the user namespace of a rootless livefs run)
        self.daemon_uid = os.geteuid()

    def is_stream(self, fh: int) -> bool:
        """A read of this handle may wait (``/dev/kmsg``)."""
        return fh in self.streams

    # -- helpers --------------------------------------------------------------
    def _call(self, fn: Callable[[Request], Any]) -> Any:
        uid, _, pid = fuse.fuse_get_context()
        if uid == self.daemon_uid:
            uid = 0
        try:
            return self.owner.syscall(pid, fn, uid)
        except (OSError, BlockingIOError):
            raise
        except Exception as exc:  # never let model trouble take the mount down
            code = getattr(exc, "errno", None)
            if not isinstance(code, int):
                log.exception("livefs: request failed")
                code = errno.EIO
            raise _err(code) from None

    def _node(self, req: Request, path: str):
        """Path walk with the kernel's search permission on every directory."""
        node = self.root
        root = req.capable  # passes every search permission
        for part in path.split("/"):
            if not part:
                continue
            if not isinstance(node, Dir):
                raise _err(errno.ENOTDIR)
            if not root and not node.allows(req, 0o1):
                raise _err(errno.EACCES)
            node = node.lookup(req, part)
            if node is None:
                raise _err(errno.ENOENT)
        return node

    # -- metadata ---------------------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict:
        def fn(req: Request) -> dict:
            node = self._node(req, path)
            t = self.mounted_at
            return dict(st_mode=node.mode, st_nlink=nlink(node, req), st_size=node.size(),
                        st_uid=node.uid(req), st_gid=0, st_atime=t, st_mtime=t, st_ctime=t, st_blksize=4096)
        return self._call(fn)

    def readdir(self, path: str, fh: Any) -> list[str]:
        def fn(req: Request) -> list[str]:
            node = self._node(req, path)
            if not isinstance(node, Dir):
                raise _err(errno.ENOTDIR)
            if not node.allows(req, 0o4):
                raise _err(errno.EACCES)
            return [(".", node.mode, 0), ("..", stat.S_IFDIR | 0o755, 0)] + \
                [(name, child.mode, 0) for name, child in node.listing(req)]
        return self._call(fn)

    def readlink(self, path: str) -> str:
        def fn(req: Request) -> str:
            node = self._node(req, path)
            if not isinstance(node, Symlink):
                raise _err(errno.EINVAL)
            return node.target(req)
        return self._call(fn)

    def access(self, path: str, amode: int) -> int:
        self._call(lambda req: self._node(req, path))
        return 0

    def statfs(self, path: str) -> dict:
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=0, f_bfree=0, f_bavail=0, f_namemax=255)

    # -- files ---------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        def fn(req: Request) -> int:
            node = self._node(req, path)
            if isinstance(node, Dir):
                raise _err(errno.EISDIR)
            accmode = flags & 3
            want = (0o4 if accmode in (os.O_RDONLY, os.O_RDWR) else 0) | (0o2 if accmode != os.O_RDONLY else 0)
            if not node.allows(req, want):
                raise _err(errno.EACCES)
            if isinstance(node, Attr):
                wants_write = accmode in (os.O_WRONLY, os.O_RDWR)
                wants_read = accmode in (os.O_RDONLY, os.O_RDWR)
                if (wants_write and (node.store is None or not node.perm & 0o222)) or \
                        (wants_read and (node.show is None or not node.perm & 0o444)):
                    raise _err(errno.EACCES)
            elif not isinstance(node, Stream):
                raise _err(errno.EACCES)
            handle = node.open(req, flags)
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = handle
            if isinstance(node, Stream):
                self.streams.add(fh)
            self.nonblock[fh] = bool(flags & os.O_NONBLOCK)
            return fh
        return self._call(fn)

    def _handle(self, fh: int) -> Any:
        handle = self.handles.get(fh)
        if handle is None:
            raise _err(errno.EBADF)
        return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        while True:
            try:
                return self._call(lambda req: self._handle(fh).read(req, size, offset))
            except BlockingIOError:
                if self.nonblock.get(fh, True):
                    raise _err(errno.EAGAIN)
            except OSError as exc:
                if isinstance(exc, fuse.FuseOSError):
                    raise
                raise _err(exc.errno or errno.EIO)
            # a blocking reader waits here, outside the model, for the next record
            self.owner.wait_for_log(INTERRUPT_POLL_S)
            if self.owner.stopping or fuse_session.session_exited() or fuse_session.interrupted():
                raise _err(errno.EINTR)

    def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
        """SEEK_DATA and SEEK_HOLE (the only ones the kernel passes on), for a
        handle with its own llseek (``/dev/kmsg``); EINVAL, as
        default_llseek() says for SEEK_HOLE, for the rest."""
        def fn(req: Request) -> int:
            handle = self._handle(fh)
            seek = getattr(handle, "llseek", None)
            if seek is None:
                raise _err(errno.EINVAL)
            ret = seek(req, offset, whence)
            if ret < 0:
                raise _err(-ret)
            handle.pos = ret  # where the kernel now keeps the reader
            return ret
        return self._call(fn)

    def poll(self, path: str, fh: int, ph: int | None, reventsp) -> int:
        """poll(2): a handle with ``poll_events`` (``/dev/kmsg``) says what it
        has now, and a waiting caller is woken at the next record; any other
        file is always ready (DEFAULT_POLLMASK, as for a file without poll)."""
        def fn(req: Request) -> int:
            events = getattr(self._handle(fh), "poll_events", None)
            mask = events(req) if events is not None else DEFAULT_POLLMASK
            if ph:
                if mask == 0 and events is not None:
                    # registered under the model's lock: no record can slip in between
                    self.owner.on_next_record(lambda: fuse_session.notify_poll(ph))
                else:
                    fuse_session.drop_poll(ph)
            return mask
        reventsp[0] = self._call(fn)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        def fn(req: Request) -> int:
            ret = self._handle(fh).write(req, data)
            if ret < 0:
                raise _err(-ret)
            return ret
        return self._call(fn)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        def fn(req: Request) -> int:
            node = self._node(req, path)
            if isinstance(node, Dir):
                raise _err(errno.EISDIR)
            if isinstance(node, Attr) and node.store is None:
                raise _err(errno.EACCES)
            return 0
        return self._call(fn)

    def release(self, path: str, fh: int) -> int:
        self.handles.pop(fh, None)
        self.nonblock.pop(fh, None)
        self.streams.discard(fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        self._call(lambda req: self._node(req, path))
        return 0

    # -- namespace operations: sysfs refuses them all -----------------------------
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        def fn(req: Request) -> int:
            parent = resolve(self.root, req, os.path.dirname(path))
            if parent is None:
                raise _err(errno.ENOENT)
            raise _err(errno.EACCES)
        return self._call(fn)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise _err(errno.EPERM)

    def mkdir(self, path: str, mode: int) -> int:
        def fn(req: Request) -> int:
            if resolve(self.root, req, os.path.dirname(path)) is None:
                raise _err(errno.ENOENT)
            raise _err(errno.EEXIST if resolve(self.root, req, path) is not None else errno.EPERM)
        return self._call(fn)

    def _refuse(self, path: str) -> int:
        self._call(lambda req: self._node(req, path))
        raise _err(errno.EPERM)

    def unlink(self, path: str) -> int:
        return self._refuse(path)

    def rmdir(self, path: str) -> int:
        return self._refuse(path)

    def rename(self, old: str, new: str) -> int:
        return self._refuse(old)

    def chmod(self, path: str, mode: int) -> int:
        return self._refuse(path)

    def chown(self, path: str, uid: int, gid: int) -> int:
        return self._refuse(path)

    def symlink(self, target: str, source: str) -> int:
        raise _err(errno.EPERM)

    def link(self, target: str, source: str) -> int:
        raise _err(errno.EPERM)
