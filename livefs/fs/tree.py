"""A kernfs-like tree: directories, attribute files and symlinks.

The tree knows nothing of livepatch.  Directory entries are computed from the
model at every lookup (nothing is cached, so a directory that vanishes in the
model vanishes at once), a file's bytes are produced when it is opened
(``single_open``), and a write is one ``store`` call that returns 0 or a
negative errno -- the sysfs contract.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from typing import Any, Callable, Iterable, Protocol, TypeVar

import attrs

from livefs.kernel.kernel import Kernel
from livefs.kernel.tasks import Task

SYSFS_FILE_SIZE = 4096  # what stat reports for every sysfs attribute
SYSFS_STORE_MAX = 4095  # PAGE_SIZE - 1: what one store sees at most


@attrs.define
class Request:
    """Who is asking: the model kernel and the calling task."""

    kernel: Kernel
    task: Task
    uid: int = 0

    @property
    def capable(self) -> bool:
        """capable(CAP_*): the model's root holds every capability, and no
        other user holds any (CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYSLOG ...)."""
        return self.uid == 0


class Handle(Protocol):
    def read(self, req: Request, size: int, offset: int) -> bytes: ...
    def write(self, req: Request, data: bytes) -> int: ...


Show = Callable[[Request], "str | bytes"]
Store = Callable[[Request, bytes], int]


@attrs.define(eq=False)
class Node:
    perm: int = 0o444
    # whose file this is (procfs: the process's); None is root's, like all of sysfs
    owner: Callable[[Request], int] | None = attrs.field(default=None, kw_only=True)

    def uid(self, req: Request) -> int:
        return 0 if self.owner is None else self.owner(req)

    def allows(self, req: Request, want: int) -> bool:
        """generic_permission() for the caller: root passes, the owner gets the
        user bits, everyone else the other bits (every file's group is root's)."""
        if req.capable:
            return True
        bits = self.perm >> 6 if self.uid(req) == req.uid else self.perm
        return bits & want == want

    @property
    def mode(self) -> int:
        raise NotImplementedError

    def size(self) -> int:
        return 0


@attrs.define(eq=False)
class Attr(Node):
    """A file whose content is ``show()`` at open and whose writes go to ``store``."""

    show: Show | None = None
    store: Store | None = None
    st_size: int = SYSFS_FILE_SIZE
    store_max: int = SYSFS_STORE_MAX
    truncate: Callable[[Request], None] | None = None  # what an O_TRUNC open does
    # writes are "<length>\n<record>" in as many pieces as FUSE splits them into
    # (128 KiB each); store() sees the whole record once
    gathered: bool = False
    gate: Callable[[Request], int] | None = None  # a gathered write's early refusal (-errno), before any piece
    # sysfs_kf_write() drops a zero-length write; a debugfs or tracefs handler
    # gets it (kstrtobool_from_user("") is EINVAL).  FUSE never sends one, so
    # only the model's own callers can tell
    empty_writes: bool = False

    @property
    def mode(self) -> int:
        return stat.S_IFREG | self.perm

    def size(self) -> int:
        return self.st_size

    def open(self, req: Request, flags: int) -> "Handle":
        if flags & os.O_TRUNC and self.truncate is not None and (flags & 3) != os.O_RDONLY:
            self.truncate(req)
        return SnapshotHandle(self, self._render(req) if self._reads(flags) else b"")

    @staticmethod
    def _reads(flags: int) -> bool:
        return (flags & 3) in (0, 2)

    def _render(self, req: Request) -> bytes:
        if self.show is None:
            return b""
        out = self.show(req)
        # surrogateescape: text that came in as bytes (a comm written with any
        # bytes, as comm_write takes them) goes out as the same bytes
        return out.encode("utf-8", "surrogateescape") if isinstance(out, str) else out


@attrs.define(eq=False)
class SnapshotHandle:
    node: Attr
    content: bytes
    pending: bytearray = attrs.field(factory=bytearray)

    def read(self, req: Request, size: int, offset: int) -> bytes:
        return self.content[offset:offset + size]

    def write(self, req: Request, data: bytes) -> int:
        if not data and not (self.node.empty_writes and self.node.store is not None):
            return 0
        if self.node.store is None:
            return -errno.EIO
        if self.node.gathered:
            return self._gather(req, data)
        chunk = data[:self.node.store_max]
        ret = self.node.store(req, chunk)
        return ret if ret < 0 else len(chunk)

    def _gather(self, req: Request, data: bytes) -> int:
        """One piece of a length-prefixed record; the piece that completes it
        gets the store's result, a malformed or oversized record EINVAL/EFBIG."""
        if not self.pending and self.node.gate is not None:
            ret = self.node.gate(req)
            if ret < 0:
                return ret
        self.pending += data
        newline = self.pending.find(b"\n", 0, 24)
        if newline < 0:
            if len(self.pending) >= 24:
                self.pending.clear()
                return -errno.EINVAL
            return len(data)
        head = bytes(self.pending[:newline])
        if not head.isdigit():
            self.pending.clear()
            return -errno.EINVAL
        total, have = int(head), len(self.pending) - newline - 1
        if total > self.node.store_max:
            self.pending.clear()
            return -errno.EFBIG
        if have < total:
            return len(data)
        record = bytes(self.pending[newline + 1:])
        self.pending.clear()
        if have > total:
            return -errno.EINVAL
        ret = self.node.store(req, record)
        return ret if ret < 0 else len(data)


@attrs.define(eq=False)
class Stream(Node):
    """A file with its own per-open state (``/dev/kmsg``)."""

    opener: Callable[[Request, int], Handle] = attrs.field(default=None)
    st_size: int = 0

    @property
    def mode(self) -> int:
        return stat.S_IFREG | self.perm

    def size(self) -> int:
        return self.st_size

    def open(self, req: Request, flags: int) -> Handle:
        return self.opener(req, flags)


@attrs.define(eq=False)
class Symlink(Node):
    target: Callable[[Request], str] = attrs.field(default=None)
    perm: int = 0o777

    @property
    def mode(self) -> int:
        return stat.S_IFLNK | self.perm


Entries = Callable[[Request], Iterable[tuple[str, Node]]]


@attrs.define(eq=False)
class Dir(Node):
    """A directory whose entries are computed per request.

    ``entries`` lists what ``ls`` shows; ``lookup`` may resolve names that are
    not listed (``hidden``: ``/proc/<tid>`` for a thread id, as Linux does).
    ``child``, where given, finds one name without listing them all (every
    FUSE request resolves its path, and ``/proc`` lists a directory per
    task); what it does not find is looked for in the listing.
    """

    perm: int = 0o755
    entries: Entries = attrs.field(factory=lambda: (lambda req: ()))
    hidden: Callable[[Request, str], Node | None] | None = None
    child: Callable[[Request, str], Node | None] | None = None

    @property
    def mode(self) -> int:
        return stat.S_IFDIR | self.perm

    def listing(self, req: Request) -> list[tuple[str, Node]]:
        return list(self.entries(req))

    def lookup(self, req: Request, name: str) -> Node | None:
        if self.child is not None:
            found = self.child(req, name)
            if found is not None:
                return found
        for entry, node in self.entries(req):
            if entry == name:
                return node
        return self.hidden(req, name) if self.hidden else None


@attrs.define(eq=False)
class FixedDir(Dir):
    """A directory whose entries, once made, never change for as long as the
    directory lives (a patch's attributes and objects: what they are depends
    on the kernel version and the patch, both fixed), so they are made at the
    first request and looked up by name after that."""

    _made: dict[str, Node] | None = None  # ``entries`` at the first request, in their order

    def _index(self, req: Request) -> dict[str, Node]:
        if self._made is None:
            self._made = dict(self.entries(req))
        return self._made

    def listing(self, req: Request) -> list[tuple[str, Node]]:
        return list(self._index(req).items())

    def lookup(self, req: Request, name: str) -> Node | None:
        return self._index(req).get(name)


_T = TypeVar("_T")
_N = TypeVar("_N", bound=Node)


def per_object(build: Callable[[_T], _N]) -> Callable[[_T], _N]:
    """One node per model object (a task's /proc directory, a patch's sysfs
    directory) for as long as the object lives, instead of a new one at every
    lookup: the node reads the object's state when asked, so it never goes
    stale, and lookups stay cheap on the path every request takes."""
    made: "weakref.WeakKeyDictionary[Any, _N]" = weakref.WeakKeyDictionary()

    def get(obj: _T) -> _N:
        node = made.get(obj)
        if node is None:
            node = made[obj] = build(obj)
        return node
    get.__doc__ = build.__doc__
    return get


def resolve(root: Dir, req: Request, path: str) -> Node | None:
    node: Node | None = root
    for part in path.strip("/").split("/"):
        if not part:
            continue
        if not isinstance(node, Dir):
            return None
        node = node.lookup(req, part)
        if node is None:
            return None
    return node


def nlink(node: Node, req: Request) -> int:
    if isinstance(node, Dir):
        return 2 + sum(1 for _, child in node.listing(req) if isinstance(child, Dir))
    return 1
