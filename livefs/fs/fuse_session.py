"""The FUSE session loop: libfuse 3, one thread for almost every request.

Why not libfuse's own loops.  Its single-threaded loop would let one blocked
reader (``cat /dev/kmsg`` waiting for the next record) stall the whole mount.
Its multi-threaded loop hands consecutive requests to different threads (the
kernel wakes idle readers of /dev/fuse in turn), and each of those threads
enters Python through a ctypes callback from a thread Python does not know,
which builds and tears down a thread state every time: measured here, that
loop costs about three times the single-threaded one per request.

So this loop reads every request in the main thread and serves it right there,
except a READ on a handle the operations call a stream (``/dev/kmsg``): that
one goes to a worker thread, since it may wait for a record.  A FUSE_INTERRUPT
for it still arrives here, so the waiting reader sees ``fuse_interrupted()``.
Worker threads block the signals libfuse's handlers end the loop on, so a
SIGTERM always lands where it interrupts the read of /dev/fuse.

libfuse 2 has no public receive/process calls: there mfusepy's own
``fuse_main_real`` runs its multi-threaded loop, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import struct
import threading
import time
from typing import Callable, Iterator

from ctypes.util import find_library

# mfusepy takes libfuse 2 when both are installed: ask for 3 where it exists
if "FUSE_LIBRARY_PATH" not in os.environ and find_library("fuse3"):
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

try:
    import mfusepy as fuse  # noqa: E402
except OSError as exc:  # no libfuse at all
    raise ImportError(f"livefs needs libfuse 3 (Debian: apt-get install fuse3): {exc}") from None

LIBFUSE3 = fuse.fuse_version_major == 3

FUSE_READ = 15
SPIN_S = 0.0002  # see Session._spin
_IN_HEADER = struct.Struct("=IIQQIIIHH")  # struct fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, ...
_READ_FH = struct.Struct("=Q")  # struct fuse_read_in starts with the file handle
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


class FuseBuf(ctypes.Structure):
    """struct fuse_buf, with room for the fields newer libfuse 3 releases add
    at its end (``mem_size``): libfuse fills it, we only read ``flags``,
    ``size`` and ``mem``."""

    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64), ("spare", ctypes.c_size_t * 8)]


def _bind() -> ctypes.CDLL:
    lib = fuse._libfuse
    if not LIBFUSE3:
        return lib
    lib.fuse_new_31.restype = ctypes.c_void_p
    lib.fuse_new_31.argtypes = [ctypes.POINTER(FuseArgs), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.fuse_get_session.restype = ctypes.c_void_p
    lib.fuse_get_session.argtypes = [ctypes.c_void_p]
    lib.fuse_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for name in ("fuse_unmount", "fuse_destroy"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = None
    for name in ("fuse_set_signal_handlers", "fuse_session_exited"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("fuse_remove_signal_handlers", "fuse_session_exit"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = None
    lib.fuse_session_fd.argtypes = [ctypes.c_void_p]
    lib.fuse_session_receive_buf.argtypes = [ctypes.c_void_p, ctypes.POINTER(FuseBuf)]
    lib.fuse_session_process_buf.argtypes = [ctypes.c_void_p, ctypes.POINTER(FuseBuf)]
    lib.fuse_session_process_buf.restype = None
    return lib


_libc = ctypes.CDLL(None, use_errno=True)
_libc.free.argtypes = [ctypes.c_void_p]
_libc.free.restype = None


def _split_argv(argv: list[bytes]) -> tuple[list[bytes], bytes]:
    """mfusepy's command line (``fuse -f -o opts MOUNTPOINT``) as fuse_new's
    arguments (options only) and the mount point."""
    mountpoint = argv[-1]
    out = [argv[0]]
    it = iter(argv[1:-1])
    for arg in it:
        if arg == b"-o":
            out += [arg, next(it)]
        elif arg == b"-d":
            out.append(arg)
    return out, mountpoint


_lib = _bind()


class Session:
    """One mounted libfuse 3 session, served by :meth:`loop`."""

    def __init__(self, is_stream: Callable[[int], bool]) -> None:
        self.is_stream = is_stream
        self.lib = _lib
        self.workers: set[threading.Thread] = set()

    def main(self, argc: int, argv, ops, ops_size: int, user_data) -> int:
        """Takes the place of fuse_main_real(): the same steps, our loop."""
        args, mountpoint = _split_argv([argv[i] for i in range(argc)])
        cargv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
        fargs = FuseArgs(len(args), cargv, 0)
        lib = self.lib
        f = lib.fuse_new_31(ctypes.byref(fargs), ctypes.cast(ops, ctypes.c_void_p), ops_size, user_data)
        if not f:
            return 3
        se = lib.fuse_get_session(f)
        if lib.fuse_mount(f, mountpoint) != 0:
            lib.fuse_destroy(f)
            return 4
        try:
            if lib.fuse_set_signal_handlers(se) != 0:
                return 6
            try:
                return self.loop(se)
            finally:
                lib.fuse_remove_signal_handlers(se)
        finally:
            joined = self._join_workers()
            lib.fuse_unmount(f)
            if joined:
                lib.fuse_destroy(f)
            # else a reader is still inside the session: leave it to the exit

    def _join_workers(self, timeout_s: float = 5.0) -> bool:
        """Wait for the stream readers: each sees the session ended (or its
        caller interrupted) within INTERRUPT_POLL_S and answers EINTR."""
        deadline = time.monotonic() + timeout_s
        for worker in list(self.workers):
            worker.join(max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in self.workers)

    def loop(self, se: int) -> int:
        lib = self.lib
        res = 0
        buf = FuseBuf()
        ready = select.poll()
        ready.register(lib.fuse_session_fd(se), select.POLLIN)
        try:
            while not lib.fuse_session_exited(se):
                self._spin(ready)
                if lib.fuse_session_exited(se):  # a signal while we looked
                    break
                res = lib.fuse_session_receive_buf(se, ctypes.byref(buf))
                if res == -4:  # -EINTR: a signal; the handler may have ended the session
                    continue
                if res <= 0:
                    break
                if self._may_block(buf):
                    self._dispatch(se, buf)
                    buf = FuseBuf()  # the worker owns (and frees) the one it was given
                else:
                    lib.fuse_session_process_buf(se, ctypes.byref(buf))
        finally:
            _libc.free(buf.mem)
        # the session stays marked exited (no fuse_session_reset) so that
        # readers still waiting in worker threads see it and finish
        lib.fuse_session_exit(se)
        return 0 if res >= 0 else -res

    @staticmethod
    def _spin(ready: "select.poll") -> None:
        """Look for the next request for SPIN_S before sleeping in read():
        a shell's requests come a few microseconds apart, and a CPU that has
        gone idle in between wakes up late (measured here: a minimal Python
        filesystem answers in 153 µs on a quiet machine, 60 µs with the CPUs
        kept busy).  At most SPIN_S of CPU after each burst of requests."""
        end = time.monotonic() + SPIN_S
        while not ready.poll(0) and time.monotonic() < end:
            pass

    def _may_block(self, buf: FuseBuf) -> bool:
        if buf.flags or not buf.mem or buf.size < _IN_HEADER.size + _READ_FH.size:
            return False
        raw = ctypes.string_at(buf.mem, _IN_HEADER.size + _READ_FH.size)
        if _IN_HEADER.unpack_from(raw)[1] != FUSE_READ:
            return False
        return self.is_stream(_READ_FH.unpack_from(raw, _IN_HEADER.size)[0])

    def _dispatch(self, se: int, buf: FuseBuf) -> None:
        def serve() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                self.lib.fuse_session_process_buf(se, ctypes.byref(buf))
            finally:
                _libc.free(buf.mem)
                self.workers.discard(threading.current_thread())

        worker = threading.Thread(target=serve, name="livefs-stream-read", daemon=True)
        self.workers.add(worker)
        worker.start()


@contextlib.contextmanager
def _main_replaced(session: Session) -> Iterator[None]:
    """mfusepy.FUSE builds the operations table and then calls its module's
    fuse_main_real(); for the duration of one mount, that call is ours."""
    saved = fuse.fuse_main_real
    fuse.fuse_main_real = session.main
    try:
        yield
    finally:
        fuse.fuse_main_real = saved


class Fuse(fuse.FUSE):
    """mfusepy's FUSE with libfuse 3's lseek: the kernel hands SEEK_DATA and
    SEEK_HOLE to the filesystem (it answers SEEK_SET, SEEK_CUR and SEEK_END
    itself); ``operations.lseek(path, offset, whence, fh)`` gives the new
    offset or raises an OSError."""

    def lseek(self, path: bytes | None, offset: int, whence: int, fip) -> int:
        return self.operations.lseek(None if path is None else path.decode(self.encoding, self.errors),
                                     offset, whence, fip.contents.fh)


def run(operations: fuse.Operations, mountpoint: str, is_stream: Callable[[int], bool], **options) -> None:
    """Mount ``operations`` at ``mountpoint`` and serve it until unmounted or
    signalled (SIGTERM, SIGINT, SIGHUP)."""
    if not LIBFUSE3:
        fuse.FUSE(operations, mountpoint, foreground=True, nothreads=False, **options)
        return
    session = Session(is_stream)
    with _main_replaced(session):
        Fuse(operations, mountpoint, foreground=True, **options)


def session_exited() -> bool:
    """libfuse is shutting down (signal or unmount); valid inside a callback."""
    lib = fuse._libfuse
    fuse_p = lib.fuse_get_context().contents.fuse
    if LIBFUSE3:
        return bool(lib.fuse_session_exited(lib.fuse_get_session(fuse_p)))
    return bool(lib.fuse_exited(ctypes.c_void_p(fuse_p)))


def notify_poll(ph: int) -> None:
    """Wake a poll(2) that waits on a file (libfuse's pollhandle), then let the handle go."""
    lib = fuse._libfuse
    lib.fuse_notify_poll(ctypes.c_void_p(ph))
    lib.fuse_pollhandle_destroy(ctypes.c_void_p(ph))


def drop_poll(ph: int) -> None:
    """A pollhandle that nobody will be woken through."""
    fuse._libfuse.fuse_pollhandle_destroy(ctypes.c_void_p(ph))


def interrupted() -> bool:
    """The kernel sent FUSE_INTERRUPT for the request this thread serves (its
    caller got a signal; after SIGKILL the kernel waits for our answer)."""
    return bool(fuse._libfuse.fuse_interrupted())
