"""/dev/kmsg: one record per write, one record per read (printk.c devkmsg_*).

FUSE hands lseek(2) to the daemon only for SEEK_DATA and SEEK_HOLE (and not at
all through libfuse 2): for the rest the kernel moves the file position
itself. So the position of each read tells what the reader did in between: the
file says it is KMSG_END bytes long, every record read moves the position on
by its length, and a read that comes somewhere else was preceded by a seek --
to 0 (SEEK_SET, or SEEK_DATA through libfuse 2) or to KMSG_END (SEEK_END),
which :meth:`KmsgHandle.llseek` then applies as devkmsg_llseek() does. Any
other position is a seek the kernel refuses (an offset other than 0 is ESPIPE,
SEEK_CUR is EINVAL): the reader stays where it was. What lseek(2) itself
returns for those is the VFS's answer, not devkmsg_llseek()'s. The seek is
seen only at the next read, so SEEK_END goes after the last record there was
when the reader last used the file: a record logged between the seek and the
read is read, as it would be on the kernel (one logged just before the seek is
too)."""

from __future__ import annotations

import errno
import os
import select

import attrs

from livefs.kernel.printk import LogRecord

from .hostproc import host_dmesg_restrict
from .tree import Dir, Request, Stream

PRINTKRB_RECORD_MAX = 1024
KMSG_END = 1 << 20  # the size /dev/kmsg reports: where SEEK_END puts the file position


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
    pos: int = 0  # the file position the kernel holds if the reader did not seek
    end_seq: int = 0  # the log's end when this reader last used the file (open, read)

    def llseek(self, req: Request, offset: int, whence: int) -> int:
        """devkmsg_llseek(): 0, or -ESPIPE for any offset, -EINVAL for SEEK_CUR
        and the rest; SEEK_SET goes to the first record, SEEK_DATA to the one
        after the last clear (dmesg -C), SEEK_END after the last record."""
        printk = req.kernel.printk
        if offset:
            return -errno.ESPIPE
        if whence == os.SEEK_SET:
            self.seq = printk.first_seq()
        elif whence == os.SEEK_DATA:
            self.seq = printk.clear_seq
        elif whence == os.SEEK_END:
            self.seq = printk.next_seq
        else:
            return -errno.EINVAL
        return 0

    def poll_events(self, req: Request) -> int:
        """devkmsg_poll(): readable when a record waits at the reader's
        place; an error too when that place was overwritten."""
        printk = req.kernel.printk
        if self.seq < printk.first_seq():
            return select.POLLIN | select.POLLRDNORM | select.POLLERR | select.POLLPRI
        return select.POLLIN | select.POLLRDNORM if printk.record_at(self.seq) is not None else 0

    def _sought(self, req: Request, offset: int) -> None:
        if offset != self.pos:
            if offset == 0:
                self.llseek(req, 0, os.SEEK_SET)
            elif offset == KMSG_END:  # SEEK_END, as of the reader's last use of the file
                self.seq = self.end_seq
            self.pos = offset

    def read(self, req: Request, size: int, offset: int) -> bytes:
        self._sought(req, offset)
        printk = req.kernel.printk
        self.end_seq = printk.next_seq
        if self.seq > printk.next_seq:  # the machine rebooted under this reader
            self.seq = printk.first_seq()
        if self.seq < printk.first_seq():
            self.seq = printk.first_seq()
            raise OSError(errno.EPIPE, "record overwritten")
        rec = printk.record_at(self.seq)
        if rec is None:
            raise BlockingIOError(errno.EAGAIN, "no record")
        data = format_record(rec)
        self.seq += 1  # consumed even when it does not fit: a short read loses it
        if len(data) > size:
            raise OSError(errno.EINVAL, "buffer too small")
        self.pos += len(data)
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
    printk = req.kernel.printk
    return KmsgHandle(printk.first_seq(), bool(flags & os.O_NONBLOCK), end_seq=printk.next_seq)


def dev_dir() -> Dir:
    kmsg = Stream(perm=0o644, opener=_open_kmsg, st_size=KMSG_END)
    return Dir(entries=lambda req: [("kmsg", kmsg)])
