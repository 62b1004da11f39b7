"""/dev/kmsg: one record per write, one record per read (printk.c devkmsg_*)."""

from __future__ import annotations

import errno
import os

import attrs

from livefs.kernel.printk import LogRecord

from .hostproc import host_dmesg_restrict
from .tree import Dir, Request, Stream

PRINTKRB_RECORD_MAX = 1024


def escape_text(text: str) -> str:
    out = []
    for ch in text.encode("utf-8", "surrogateescape"):
        if ch < 0x20 or ch >= 0x7F or ch == 0x5C:
            out.append(f"\\x{ch:02x}")
        else:
            out.append(chr(ch))
    return "".join(out)


def format_record(rec: LogRecord) -> bytes:
    usec = rec.ts_ns // 1000
    return f"{rec.prefix},{rec.seq},{usec},-;{escape_text(rec.text)}\n".encode()


@attrs.define(eq=False)
class KmsgHandle:
    seq: int
    nonblock: bool

    def read(self, req: Request, size: int, offset: int) -> bytes:
        printk = req.kernel.printk
        if self.seq > printk.next_seq:  # the machine rebooted under this reader
            self.seq = printk.first_seq()
        if self.seq < printk.first_seq():
            self.seq = printk.first_seq()
            raise OSError(errno.EPIPE, "record overwritten")
        rec = printk.record_at(self.seq)
        if rec is None:
            raise BlockingIOError(errno.EAGAIN, "no record")
        data = format_record(rec)
        if len(data) > size:
            raise OSError(errno.EINVAL, "buffer too small")
        self.seq += 1
        return data

    def write(self, req: Request, data: bytes) -> int:
        if len(data) > PRINTKRB_RECORD_MAX:
            return -errno.EINVAL
        req.kernel.printk.write_user(data, caller=f"T{req.task.pid}")
        return len(data)


def _open_kmsg(req: Request, flags: int) -> KmsgHandle:
    # devkmsg_open(): writers need nothing; readers pass the syslog check,
    # which with dmesg_restrict wants CAP_SYSLOG
    if flags & os.O_ACCMODE != os.O_WRONLY and not req.capable and host_dmesg_restrict():
        raise OSError(errno.EPERM, "dmesg_restrict")
    return KmsgHandle(req.kernel.printk.first_seq(), bool(flags & os.O_NONBLOCK))


def dev_dir() -> Dir:
    kmsg = Stream(perm=0o644, opener=_open_kmsg)
    return Dir(entries=lambda req: [("kmsg", kmsg)])
