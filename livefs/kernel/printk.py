"""The printk ring buffer and dynamic debug.

Records carry the sequence number, level, facility and model timestamp that
``/dev/kmsg`` exposes.  ``pr_debug`` call sites are registered with
:class:`DynamicDebug` exactly like the kernel's ``__dyndbg`` section entries, so
the selftests' writes to ``dynamic_debug/control`` decide which debug lines
reach the log.
"""

from __future__ import annotations

import errno
import fnmatch
import re
from collections import deque
from typing import TYPE_CHECKING, Callable

import attrs

from .clock import Clock

if TYPE_CHECKING:
    from .version import KernelVersion

KERN_EMERG, KERN_ALERT, KERN_CRIT, KERN_ERR, KERN_WARNING, KERN_NOTICE, KERN_INFO, KERN_DEBUG = range(8)
LOG_USER = 1
DEFAULT_MESSAGE_LOGLEVEL = KERN_WARNING


@attrs.frozen
class LogRecord:
    seq: int
    ts_ns: int
    facility: int
    level: int
    text: str
    caller: str  # "T<pid>" for a task context, as CONFIG_PRINTK_CALLER prints

    @property
    def prefix(self) -> int:
        return self.facility * 8 + self.level


# Debian's x86_64 kernels (6.1, 6.12: /boot/config-6.12.95+deb12-amd64):
# CONFIG_LOG_BUF_SHIFT=17, CONFIG_LOG_CPU_MAX_BUF_SHIFT=12
LOG_BUF_SHIFT, LOG_CPU_MAX_BUF_SHIFT = 17, 12
PRB_AVGBITS = 5  # kernel/printk/printk.c: one descriptor per 32 bytes of text ring


def log_buf_len(possible_cpus: int = 1) -> int:
    """log_buf_add_cpu(): the static buffer, grown (to a power of two) only
    when the other CPUs' share would exceed half of it (more than 17 CPUs here)."""
    size = 1 << LOG_BUF_SHIFT
    extra = (possible_cpus - 1) * (1 << LOG_CPU_MAX_BUF_SHIFT)
    if extra <= size // 2:
        return size
    return 1 << (extra + size - 1).bit_length()


def _blk_size(text: str) -> int:
    """to_blk_size(): the text (no trailing newline) after the block's id, aligned
    to sizeof(unsigned long); an empty text takes no data block."""
    n = len(text.encode("utf-8", "surrogateescape"))
    return 0 if n == 0 else -(-(n + 8) // 8) * 8


@attrs.define
class Printk:
    """The printk ring buffer (kernel/printk/printk_ringbuffer.c): a text ring
    of ``size`` bytes and ``size >> PRB_AVGBITS`` descriptors.  A record's
    text goes in one block that never wraps (one that would cross the end
    starts again at the front, the rest of the wrap counted to it); the oldest
    records are dropped while the new block's end is more than ``size``
    bytes past the oldest one's start, or when no descriptor is left."""

    clock: Clock
    size: int = attrs.field(factory=log_buf_len)
    records: deque[LogRecord] = attrs.field(init=False)
    next_seq: int = 0
    clear_seq: int = 0
    listeners: list[Callable[[LogRecord], None]] = attrs.field(factory=list)
    _lpos: deque[int] = attrs.field(init=False)  # where each record's block begins
    _head: int = 0  # where the next block may begin

    def __attrs_post_init__(self) -> None:
        self.records = deque()
        self._lpos = deque()

    @property
    def descriptors(self) -> int:
        return self.size >> PRB_AVGBITS

    def log(self, level: int, text: str, facility: int = 0, caller: str = "T0",
            ts_ns: int | None = None) -> LogRecord:
        """One record; embedded newlines stay in it (vprintk_store() strips
        only the trailing one)."""
        rec = LogRecord(self.next_seq, self.clock.now_ns if ts_ns is None else ts_ns, facility, level, text, caller)
        self.next_seq += 1
        blk = _blk_size(text)
        begin = self._head  # blk_lpos.begin: a wrapping block's gap is its own
        end = begin + blk
        if blk and begin // self.size != (end - 1) // self.size:
            end = (end - 1) // self.size * self.size + blk  # get_next_lpos(): the data at the next wrap
        while self.records and (len(self.records) >= self.descriptors or self._lpos[0] < end - self.size):
            self.records.popleft()
            self._lpos.popleft()
        self._head = end
        self.records.append(rec)
        self._lpos.append(begin)
        for listener in self.listeners:
            listener(rec)
        return rec

    def first_seq(self) -> int:
        return self.records[0].seq if self.records else self.next_seq

    def syslog_texts(self) -> list[str]:
        """syslog(2)'s view (SYSLOG_ACTION_READ_ALL): each record from the
        last clear on, every line of it prefixed "<pri>[secs.usecs] " as
        record_print_text() does for syslog (no CONFIG_PRINTK_CALLER)."""
        out = []
        for rec in self.records:
            if rec.seq < self.clear_seq:
                continue
            usec = rec.ts_ns // 1000
            head = f"<{rec.prefix}>[{usec // 1_000_000:5d}.{usec % 1_000_000:06d}] "
            out.append("".join(f"{head}{line}\n" for line in rec.text.split("\n")))
        return out

    def record_at(self, seq: int) -> LogRecord | None:
        if not self.records or seq < self.records[0].seq or seq >= self.next_seq:
            return None
        return self.records[seq - self.records[0].seq]

    def write_user(self, data: bytes, caller: str) -> None:
        """One ``write()`` to /dev/kmsg: one record, ``<N>`` sets facility/level."""
        text = data.decode("utf-8", "surrogateescape")
        facility, level = LOG_USER, DEFAULT_MESSAGE_LOGLEVEL
        if text.startswith("<"):
            end = text.find(">")
            if 1 < end <= 4 and text[1:end].isdigit():
                prio = int(text[1:end])
                level = prio & 7
                # the kernel forbids user space to claim the kernel facility
                facility = (prio >> 3) or LOG_USER
                text = text[end + 1:]
        if text.endswith("\n"):
            text = text[:-1]
        self.log(level, text, facility=facility, caller=caller)


@attrs.define(eq=False)
class DebugSite:
    """One ``pr_debug()`` call site, as listed in dynamic_debug/control."""

    module: str
    filename: str
    lineno: int
    function: str
    fmt: str
    flags: str = ""

    @property
    def enabled(self) -> bool:
        return "p" in self.flags

    def control_line(self, order: str = "pmfsltd") -> str:
        """ddebug_proc_show(): the flags in opt_array's order (``_`` for none),
        the format through seq_escape_str(ESCAPE_SPACE, "\\t\\r\\n\\""): tab, CR
        and newline as ``\\t`` ``\\r`` ``\\n``; a quote or backslash as it is
        (ESCAPE_SPACE has no rule for them; kernels before 6.1 used octal)."""
        escaped = self.fmt.translate(_ESCAPE_SPACE)
        flags = "".join(c for c in order if c in self.flags) or "_"
        return f'{self.filename}:{self.lineno} [{self.module}]{self.function} ={flags} "{escaped}"'


_ESCAPE_SPACE = str.maketrans({"\t": "\\t", "\r": "\\r", "\n": "\\n"})


def flag_order(version: "KernelVersion | None") -> str:
    """opt_array of lib/dynamic_debug.c: 's' (source file name) from 6.2."""
    return "pmflt" if version is not None and not version.at_least(6, 2) else "pmfsltd"


_FLAG_CHARS = set("pmfltsd_")
_C_SPACE = " \t\n\v\f\r"  # the kernel's isspace()


@attrs.define
class DynamicDebug:
    sites: list[DebugSite] = attrs.field(factory=list)

    def add_site(self, site: DebugSite) -> DebugSite:
        self.sites.append(site)
        return site

    def control_text(self, version: "KernelVersion | None" = None) -> str:
        lines = ["# filename:lineno [module]function flags format"]
        lines += [s.control_line(flag_order(version)) for s in self.sites]
        return "\n".join(lines) + "\n"

    def exec_queries(self, text: str, version: "KernelVersion | None" = None) -> int:
        """Apply the queries of one write; 0 or -EINVAL like ddebug_exec_queries
        (a flag the version does not know is EINVAL)."""
        known = set(flag_order(version)) | {"_"}
        queries = [q.strip(_C_SPACE) for part in text.split("\n") for q in part.split(";")]
        queries = [q for q in queries if q and not q.startswith("#")]
        parsed = []
        for q in queries:
            query = self._parse(q)
            if query is None or not query[2] <= known:
                return -errno.EINVAL
            parsed.append(query)
        for match, op, flags in parsed:
            for site in self.sites:
                if match(site):
                    cur = set(site.flags)
                    if op == "+":
                        cur |= flags
                    elif op == "-":
                        cur -= flags
                    else:
                        cur = set(flags)
                    site.flags = "".join(sorted(cur))
        return 0

    @staticmethod
    def _parse(query: str):
        words = [w for w in re.split(f"[{_C_SPACE}]+", query) if w]  # isspace(): not Python's \x1c-\x1f
        if not words:
            return None
        flagword = words[-1]
        if flagword[0] not in "+-=" or not set(flagword[1:]) <= _FLAG_CHARS:
            return None
        op, flags = flagword[0], set(flagword[1:]) - {"_"}
        words = words[:-1]
        if len(words) % 2:
            return None
        conds: list[Callable[[DebugSite], bool]] = []
        for key, value in zip(words[0::2], words[1::2]):
            if key == "file":
                conds.append(lambda s, v=value: fnmatch.fnmatchcase(s.filename, v)
                             or fnmatch.fnmatchcase(s.filename.rsplit("/", 1)[-1], v))
            elif key == "func":
                conds.append(lambda s, v=value: fnmatch.fnmatchcase(s.function, v))
            elif key == "module":
                conds.append(lambda s, v=value: fnmatch.fnmatchcase(s.module, v))
            elif key == "format":
                conds.append(lambda s, v=value: v in s.fmt)
            elif key == "line":
                lo, _, hi = value.partition("-")
                try:
                    first = int(lo) if lo else 0
                    last = int(hi) if hi else (first if not _ else 1 << 30)
                except ValueError:
                    return None
                conds.append(lambda s, a=first, b=last: a <= s.lineno <= b)
            else:
                return None
        return (lambda s: all(c(s) for c in conds)), op, flags
