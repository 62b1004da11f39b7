"""Module syscalls (and syslog) of ``livefs run``'s command, delivered to the model.

The command starts under a seccomp filter that hands ``init_module``,
``finit_module`` and ``delete_module`` to a supervisor (SECCOMP_RET_USER_NOTIF)
instead of the host kernel, so the host's own kmod tools, by name or by full
path, and any program that makes those syscalls itself, load into and unload
from the model, and get the model's return value and errno.  Everything else
the command does goes to the host kernel untouched.

The supervisor is a thread of the namespace helper.  For each call it reads
what the caller passed (the image through the caller's fd, or from its memory;
the parameter string and the module name from its memory, through the real
procfs), makes the same request the kmod stand-ins make (the mock's
``sys/kernel/debug/livefs/{init,delete}_module``) from a thread named as the
caller is, so the model's log says ``Comm: insmod``, and answers with what the
model said.  syslog(2) is answered from the model's log too (``dmesg -c`` and
``dmesg -C`` clear the model's, never the host's).  getpid(2), which a
livepatch may patch (test_klp_syscall), goes on to the host kernel unless a
patch replaces it; then the model makes it as the calling task (which so
enters and leaves the model's kernel and switches on its way out).  A filter
that cannot be installed (a kernel before 5.0) leaves the command with the
stand-ins alone, and ``--verbose`` says so.  The command
never has CAP_SYS_MODULE either way: a call the filter does not see fails
closed in the host kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Callable

from livefs.fs.hostproc import host_dmesg_restrict
from livefs.kernel.printk import log_buf_len

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long

# x86_64 only: calls made through another ABI (i386, x32) pass the filter and
# reach the host kernel, which refuses them: the command has no CAP_SYS_MODULE
AUDIT_ARCH_X86_64 = 0xC000003E
NR_GETPID, NR_SYSLOG, NR_INIT_MODULE, NR_DELETE_MODULE, NR_FINIT_MODULE = 39, 103, 175, 176, 313
SYSCALLS = {NR_INIT_MODULE: "init_module", NR_DELETE_MODULE: "delete_module", NR_FINIT_MODULE: "finit_module",
            NR_SYSLOG: "syslog", NR_GETPID: "getpid"}
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PATCHED_CACHE_S = 0.02  # how long "is getpid patched?" is taken as known
# syslog(2) actions (include/linux/syslog.h)
(SYSLOG_CLOSE, SYSLOG_OPEN, SYSLOG_READ, SYSLOG_READ_ALL, SYSLOG_READ_CLEAR, SYSLOG_CLEAR, SYSLOG_CONSOLE_OFF,
 SYSLOG_CONSOLE_ON, SYSLOG_CONSOLE_LEVEL, SYSLOG_SIZE_UNREAD, SYSLOG_SIZE_BUFFER) = range(11)

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
NR_SECCOMP = 317
PR_SET_NAME = 15
# <linux/seccomp.h>: _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct
# seccomp_notif_resp), _IOW('!', 2, __u64)
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102

# classic BPF
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
_OFF_NR, _OFF_ARCH = 0, 4  # struct seccomp_data

NOTIF = struct.Struct("=QII iIQ6Q")  # id, pid, flags, data: nr, arch, ip, args[6]
RESP = struct.Struct("=QqiI")  # id, val, error, flags
MODULE_ARGS_MAX = 1 << 16
MODULE_IMAGE_MAX = 1 << 28
NAME_MAX = 64


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _program() -> list[tuple[int, int, int, int]]:
    nrs = list(SYSCALLS)
    prog = [(BPF_LD_W_ABS, 0, 0, _OFF_ARCH),
            (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),  # x86_64: look at the number
            (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),  # another ABI: see below
            (BPF_LD_W_ABS, 0, 0, _OFF_NR)]
    for i, nr in enumerate(nrs):  # a hit jumps to the USER_NOTIF return at the end
        prog.append((BPF_JEQ_K, len(nrs) - i, 0, nr))
    prog += [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF)]
    return prog


def available() -> bool:
    """The kernel hands syscalls to a supervisor (5.0 and later, and x86_64,
    the one ABI the filter knows)."""
    if os.uname().machine != "x86_64":
        return False
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            return "user_notif" in f.read().split()
    except OSError:
        return False


def install_filter() -> int:
    """In the command's process, before exec: the filter, and its listener fd
    (negative errno when the kernel has no user notification)."""
    prog = _program()
    arr = (SockFilter * len(prog))(*(SockFilter(*ins) for ins in prog))
    fprog = SockFprog(len(prog), arr)
    fd = _libc.syscall(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, ctypes.byref(fprog))
    return fd if fd >= 0 else -ctypes.get_errno()


def send_fd(sock: socket.socket, fd: int) -> None:
    socket.send_fds(sock, [b"L" if fd >= 0 else str(-fd).encode()], [fd] if fd >= 0 else [])


def recv_fd(sock: socket.socket) -> tuple[int | None, int]:
    """(listener fd or None, errno when there is none)."""
    msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
    if fds:
        return fds[0], 0
    return None, (int(msg) if msg.isdigit() else errno.EIO)


class Supervisor:
    """Answers the command's module syscalls from the model."""

    def __init__(self, listener: int, proc_fd: int, control: Path) -> None:
        self.listener = listener
        self.proc_fd = proc_fd  # the real procfs (the mock's /proc is laid over /proc)
        self.control = control  # the mock's sys/kernel/debug/livefs
        self.thread = threading.Thread(target=self._loop, name="livefs-modsyscalls", daemon=True)
        self.calls = 0
        self._patched_at = -1.0
        self._patched_set: set[str] = set()

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        buf = ctypes.create_string_buffer(NOTIF.size)
        while True:
            ctypes.memset(buf, 0, NOTIF.size)
            if _libc.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_RECV, ctypes.addressof(buf)) != 0:
                if ctypes.get_errno() in (errno.EINTR, errno.ENOENT):
                    continue  # interrupted, or the caller went away before we read it
                return  # the filter's last user is gone
            nid, pid, _, nr, _, _, *args = NOTIF.unpack(buf.raw)
            self.calls += 1
            try:
                if nr == NR_GETPID and not self._patched("getpid"):
                    self._continue(nid)  # the host kernel answers, as if nothing had stopped it
                    continue
                worker = threading.Thread(target=self._answer, args=(nid, pid, nr, args), daemon=True)
                worker.start()
            except Exception:  # the loop must live: every caller of the filter waits on it
                self._respond(nid, -errno.EAGAIN if nr != NR_GETPID else -errno.ENOSYS)

    def _answer(self, nid: int, pid: int, nr: int, args: list[int]) -> None:
        ret = -errno.EIO
        try:
            _name_thread(self._comm(pid))
            ret = {NR_INIT_MODULE: self._init_module, NR_FINIT_MODULE: self._finit_module,
                   NR_DELETE_MODULE: self._delete_module, NR_SYSLOG: self._syslog,
                   NR_GETPID: self._getpid}[nr](pid, args, nid)
        except OSError as exc:
            ret = -(exc.errno or errno.EIO)
        finally:
            self._respond(nid, ret)  # whatever happened, the caller is answered

    # -- what the caller passed --------------------------------------------------
    def _open(self, pid: int, rel: str, flags: int = os.O_RDONLY) -> int:
        return os.open(f"{pid}/{rel}", flags | os.O_CLOEXEC, dir_fd=self.proc_fd)

    def _comm(self, pid: int) -> str:
        try:
            fd = self._open(pid, "comm")
            try:
                return os.read(fd, 64).decode("utf-8", "replace").rstrip("\n")
            finally:
                os.close(fd)
        except OSError:
            return "insmod"

    def _memory(self, pid: int, addr: int, size: int) -> bytes:
        fd = self._open(pid, "mem")
        try:
            return os.pread(fd, size, addr)
        finally:
            os.close(fd)

    def _string(self, pid: int, addr: int, limit: int) -> bytes:
        """A NUL-terminated string of the caller's (strndup_user: EFAULT for a
        bad pointer, EINVAL past ``limit``)."""
        if not addr:
            raise OSError(errno.EFAULT, "bad address")
        out = b""
        while len(out) < limit:
            try:
                chunk = self._memory(pid, addr + len(out), min(4096, limit - len(out)))
            except OSError:
                raise OSError(errno.EFAULT, "bad address") from None
            if not chunk:
                raise OSError(errno.EFAULT, "bad address")
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end]
            out += chunk
        raise OSError(errno.EINVAL, "too long")

    def _readable(self, pid: int, fd: int) -> bool:
        """The caller's fd is open and open for reading (fdinfo's flags): what
        we open through /proc is a new open file, so its mode is checked here."""
        try:
            info = self._open(pid, f"fdinfo/{fd}")
        except OSError:
            return False
        try:
            for line in os.read(info, 4096).decode().splitlines():
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE != os.O_WRONLY
        finally:
            os.close(info)
        return False

    def _still_waiting(self, nid: int) -> bool:
        """The caller is still in its syscall (not killed meanwhile): what we
        read of its memory was its, not a new process's at that pid."""
        cookie = ctypes.c_uint64(nid)
        return _libc.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_ID_VALID, ctypes.addressof(cookie)) == 0

    # -- the calls -----------------------------------------------------------------
    def _finit_module(self, pid: int, args: list[int], nid: int) -> int:
        fd, uargs, flags = args[0], args[1], args[2]
        if flags & ~0x7:  # MODULE_INIT_IGNORE_MODVERSIONS|IGNORE_VERMAGIC|COMPRESSED_FILE
            return -errno.EINVAL
        fd &= 0xFFFFFFFF
        if not self._readable(pid, fd):
            return -errno.EBADF
        try:
            image_fd = self._open(pid, f"fd/{fd}")
        except OSError:
            return -errno.EBADF
        try:
            st = os.fstat(image_fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                return -errno.EINVAL  # kernel_read_file(): a regular file with something in it
            image = os.read(image_fd, MODULE_IMAGE_MAX)
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        finally:
            os.close(image_fd)
        params = self._string(pid, uargs, MODULE_ARGS_MAX)
        if not self._still_waiting(nid):
            return -errno.EINTR
        return self._load(image, params)

    def _init_module(self, pid: int, args: list[int], nid: int) -> int:
        umod, length, uargs = args[0], args[1], args[2]
        if length > MODULE_IMAGE_MAX:
            return -errno.E2BIG
        try:
            image = self._memory(pid, umod, length)
        except OSError:
            return -errno.EFAULT
        if len(image) != length:
            return -errno.EFAULT
        params = self._string(pid, uargs, MODULE_ARGS_MAX)
        if not self._still_waiting(nid):
            return -errno.EINTR
        return self._load(image, params)

    def _delete_module(self, pid: int, args: list[int], nid: int) -> int:
        name = self._string(pid, args[0], NAME_MAX)
        if not self._still_waiting(nid):
            return -errno.EINTR
        return self._write("delete_module", name)

    def _syslog(self, pid: int, args: list[int], nid: int) -> int:
        """do_syslog() over the model's log: read (all, or all and clear),
        clear, sizes; the console actions change nothing here.  SYSLOG_ACTION_READ
        (klogd's blocking read) is not modelled: EPERM, as without CAP_SYSLOG."""
        action = ctypes.c_int(args[0] & 0xFFFFFFFF).value
        buf, length = args[1], ctypes.c_int(args[2] & 0xFFFFFFFF).value
        root = self._euid(pid) == 0
        if action in (SYSLOG_CLOSE, SYSLOG_OPEN):
            return 0
        if action in (SYSLOG_READ_ALL, SYSLOG_SIZE_BUFFER) and not root and host_dmesg_restrict():
            return -errno.EPERM
        if action not in (SYSLOG_READ_ALL, SYSLOG_SIZE_BUFFER) and not root:
            return -errno.EPERM
        if action == SYSLOG_SIZE_BUFFER:
            return log_buf_len()  # the model's ring, CONFIG_LOG_BUF_SHIFT=17
        if action == SYSLOG_SIZE_UNREAD:
            return sum(len(t.encode()) for t in self._texts())
        if action == SYSLOG_CLEAR:
            return self._write("kmsg_clear_seq", b"1")
        if action in (SYSLOG_CONSOLE_OFF, SYSLOG_CONSOLE_ON):
            return 0
        if action == SYSLOG_CONSOLE_LEVEL:
            return 0 if 1 <= length <= 8 else -errno.EINVAL
        if action not in (SYSLOG_READ_ALL, SYSLOG_READ_CLEAR):
            return -errno.EPERM if action == SYSLOG_READ else -errno.EINVAL
        if not buf or length < 0:
            return -errno.EINVAL
        picked: list[bytes] = []
        room = length
        for text in reversed([t.encode() for t in self._texts()]):  # the newest that fit
            if len(text) > room:
                break
            picked.insert(0, text)
            room -= len(text)
        data = b"".join(picked)
        if not self._still_waiting(nid):
            return -errno.EINTR
        try:
            mem = self._open(pid, "mem", os.O_RDWR)
            try:
                os.pwrite(mem, data, buf)
            finally:
                os.close(mem)
        except OSError:
            return -errno.EFAULT
        if action == SYSLOG_READ_CLEAR:
            self._write("kmsg_clear_seq", b"1")
        return len(data)

    def _texts(self) -> list[str]:
        fd = os.open(self.control / "syslog", os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return [t for t in b"".join(chunks).decode("utf-8", "surrogateescape").split("\0") if t]

    def _euid(self, pid: int) -> int:
        try:
            return os.stat(str(pid), dir_fd=self.proc_fd).st_uid
        except OSError:
            return 0

    def _patched(self, name: str) -> bool:
        now = time.monotonic()
        if now - self._patched_at > PATCHED_CACHE_S:
            try:
                with open(self.control / "syscalls_patched") as f:
                    self._patched_set = set(f.read().split())
            except OSError:
                self._patched_set = set()
            self._patched_at = now
        return name in self._patched_set

    def _getpid(self, pid: int, args: list[int], nid: int) -> int:
        """getpid() as task ``pid`` in the model (its value is the model's:
        the thread group's id, unless a patch says otherwise)."""
        fd = os.open(self.control / "syscall", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.write(fd, f"getpid {pid}".encode())
            return int(os.pread(fd, 64, 0) or b"-38")
        except (OSError, ValueError) as exc:
            return -(getattr(exc, "errno", None) or errno.EIO)
        finally:
            os.close(fd)

    def _continue(self, nid: int) -> None:
        resp = ctypes.create_string_buffer(RESP.pack(nid, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE), RESP.size)
        _libc.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_SEND, ctypes.addressof(resp))

    def _load(self, image: bytes, params: bytes) -> int:
        record = params + b"\0" + image
        return self._write("init_module", f"{len(record)}\n".encode() + record)

    def _write(self, name: str, data: bytes) -> int:
        """The stand-ins' request: the model's errno comes back as the write's."""
        fd = os.open(self.control / name, os.O_WRONLY | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            return 0
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        finally:
            os.close(fd)

    def _respond(self, nid: int, ret: int) -> None:
        resp = ctypes.create_string_buffer(RESP.pack(nid, 0 if ret < 0 else ret, ret if ret < 0 else 0, 0), RESP.size)
        _libc.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_SEND, ctypes.addressof(resp))  # ENOENT: the caller is gone


def _name_thread(comm: str) -> None:
    """The model's task for this request takes its comm from /proc: the caller's."""
    _libc.prctl(PR_SET_NAME, comm.encode()[:15], 0, 0, 0)


def preexec_installer(sock: socket.socket, then: Callable[[], None]) -> Callable[[], None]:
    """A preexec_fn: ``then`` (the command's other set-up), the filter, and
    its listener sent to the supervisor's end of ``sock``."""
    def run() -> None:
        then()
        try:
            fd = install_filter()
        except Exception:  # never keep the command from starting: the stand-ins remain
            fd = -errno.ENOSYS
        try:
            send_fd(sock, fd)
        except OSError:
            pass
        if fd >= 0:
            os.close(fd)
    return run
