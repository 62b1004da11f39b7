"""/proc views: per-task directories, cmdline, meminfo, the sysctls we own."""

from __future__ import annotations

import errno
import re
from typing import Iterable

from livefs.kernel.modules import ModuleState
from livefs.kernel.panic import add_taint_mask
from livefs.kernel.symbols import stack_trace
from livefs.kernel.tasks import RunState, Task, TaskKind

from .hostproc import HOST_PROC, host_euid
from .tree import Attr, Dir, Node, Request, Symlink, per_object

TASK_COMM_LEN = 16

INT_MAX = (1 << 31) - 1
TMPBUFLEN = 22  # kernel/sysctl.c: what proc_get_long() looks at
_SPACES = b" \t\n\v\f\r"  # isspace()
_TRAILERS = b" \t\n"  # proc_wspace_sep: what may follow the number


_BASE0 = re.compile(rb"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _strtoul_base0(text: bytes) -> tuple[int | None, int]:
    """simple_strtoul(s, &end, 0) on text that starts with a digit: (value,
    characters used); None past ULONG_MAX (strtoul_lenient's -ERANGE)."""
    m = _BASE0.match(text)
    assert m is not None
    digits = m.group()
    value = int(digits, 16) if digits[:2].lower() == b"0x" else int(digits, 8 if digits[:1] == b"0" else 10)
    return (value if value < 1 << 64 else None), m.end()


def parse_dointvec(data: bytes) -> int | None:
    """proc_dointvec() writing one int (kernel/sysctl.c __do_proc_dointvec,
    proc_get_long, do_proc_dointvec_conv): blanks first, an optional '-', a
    number in base 0 (0x hex, 0 octal), then a blank or the end; what follows
    the blank is not looked at.  None for EINVAL (nothing there, anything else
    after the number, a number of 21 characters, or one outside int)."""
    text = data.lstrip(_SPACES)
    if not text:
        return None
    tmp = text[:TMPBUFLEN - 1]
    neg = tmp[:1] == b"-" and len(text) > 1
    body = tmp[1:] if neg else tmp
    if not body[:1].isdigit():
        return None
    value, used = _strtoul_base0(body)
    length = used + neg
    if value is None or length == TMPBUFLEN - 1:
        return None
    if length < len(text) and text[length] not in _TRAILERS:
        return None
    if value > INT_MAX + neg:
        return None
    return -value if neg else value


# include/linux/sched.h: PF_FORKNOEXEC, PF_SUPERPRIV, PF_NOFREEZE, PF_KTHREAD, PF_RANDOMIZE
PF_FORKNOEXEC, PF_SUPERPRIV, PF_NOFREEZE, PF_KTHREAD, PF_RANDOMIZE = 0x40, 0x100, 0x8000, 0x200000, 0x400000
EXIT_SIGNAL = 17  # SIGCHLD: kernel_thread() and fork() both ask for it
CAP_FULL = (1 << 41) - 1  # CAP_LAST_CAP 40: everything a kthread or root holds
RLIM_INFINITY = (1 << 64) - 1
SIGIGN_ALL = (1 << 64) - 1  # ignore_signals() of kthreadd, inherited by every kthread


def _state(task: Task) -> str:
    """get_task_state(): what ``State:`` (and, by its first letter, stat) says."""
    if task.state is RunState.SLEEPING:
        return "S (sleeping)" if task.interruptible else "D (disk sleep)"
    return "R (running)"  # on a CPU, or in user space


def _pgid_sid(task: Task) -> tuple[int, int]:
    return (0, 0) if task.is_kthread else (task.tgid, task.tgid)


def _pid_stat(task: Task) -> str:
    """do_task_stat() (fs/proc/array.c) of a model task: the fields tools read
    (pid, comm, state, ppid, pgrp, session, flags, threads, processor) are the
    task's; times, faults and memory are zeros, as for a task with no mm."""
    kthread = task.is_kthread
    flags = PF_KTHREAD | PF_NOFREEZE | PF_FORKNOEXEC if kthread else PF_RANDOMIZE | PF_SUPERPRIV
    pgid, sid = _pgid_sid(task)
    sigign = (SIGIGN_ALL if kthread else 0) & 0x7FFFFFFF
    wchan = int(task.state is RunState.SLEEPING)
    fields = [task.pid, f"({task.comm})", _state(task)[0], task.ppid, pgid, sid, 0, -1, flags,
              0, 0, 0, 0,                   # min_flt cmin_flt maj_flt cmaj_flt
              0, 0, 0, 0,                   # utime stime cutime cstime
              20, 0, 1, 0, 0,               # priority nice num_threads itrealvalue start_time
              0, 0, RLIM_INFINITY, 0, 0, 0, 0, 0,  # vsize rss rsslim start_code end_code start_stack esp eip
              0, 0, sigign, 0, wchan, 0, 0,        # signal blocked sigignore sigcatch wchan nswap cnswap
              EXIT_SIGNAL, task.cpu or 0, 0, 0, 0, 0, 0,  # exit_signal processor rt_priority policy blkio gtime cgtime
              0, 0, 0, 0, 0, 0, 0, 0]       # start_data end_data start_brk arg_start arg_end env_start env_end exit_code
    return " ".join(str(f) for f in fields) + "\n"


def _bitmap(bits: int, nbits: int) -> str:
    """%*pb: hex in comma-separated 32-bit groups."""
    groups = (nbits + 31) // 32
    return ",".join(f"{(bits >> (32 * i)) & 0xFFFFFFFF:0{8 if i < groups - 1 else (nbits - 32 * i + 3) // 4}x}"
                    for i in reversed(range(groups)))


def _pid_status(task: Task, ncpus: int) -> str:
    """proc_pid_status() (fs/proc/array.c) of a model task, x86_64 6.12 layout;
    no Vm* lines (a model task has no mm)."""
    kthread = task.is_kthread
    pgid, sid = _pgid_sid(task)
    name = task.comm.replace("\\", "\\\\").replace("\n", "\\n")
    caps = f"{CAP_FULL:016x}"
    lines = [
        f"Name:\t{name}", "Umask:\t0000" if kthread else "Umask:\t0022", f"State:\t{_state(task)}",
        f"Tgid:\t{task.tgid}", "Ngid:\t0", f"Pid:\t{task.pid}", f"PPid:\t{task.ppid}", "TracerPid:\t0",
        "Uid:\t0\t0\t0\t0", "Gid:\t0\t0\t0\t0", "FDSize:\t64", "Groups:\t ",
        f"NStgid:\t{task.tgid}", f"NSpid:\t{task.pid}", f"NSpgid:\t{pgid}", f"NSsid:\t{sid}",
        f"Kthread:\t{int(kthread)}", "Threads:\t1", "SigQ:\t0/7748",
        "SigPnd:\t0000000000000000", "ShdPnd:\t0000000000000000", "SigBlk:\t0000000000000000",
        f"SigIgn:\t{SIGIGN_ALL if kthread else 0:016x}", "SigCgt:\t0000000000000000",
        "CapInh:\t0000000000000000", f"CapPrm:\t{caps}", f"CapEff:\t{caps}", f"CapBnd:\t{caps}",
        "CapAmb:\t0000000000000000", "NoNewPrivs:\t0", "Seccomp:\t0", "Seccomp_filters:\t0",
        "Speculation_Store_Bypass:\tthread vulnerable", "SpeculationIndirectBranch:\tconditional enabled",
        f"Cpus_allowed:\t{_bitmap((1 << ncpus) - 1, ncpus)}",
        f"Cpus_allowed_list:\t{'0' if ncpus == 1 else f'0-{ncpus - 1}'}",
        f"Mems_allowed:\t{_bitmap(1, 1024)}", "Mems_allowed_list:\t0",
        f"voluntary_ctxt_switches:\t{task.wakeups}", "nonvoluntary_ctxt_switches:\t0",
        "x86_Thread_features:\t", "x86_Thread_features_locked:\t",
    ]
    return "\n".join(lines) + "\n"


def _pid_cmdline(task: Task) -> bytes:
    """proc_pid_cmdline_read(): nothing for a kthread (no mm); a staged user
    task's argv is its name."""
    return b"" if task.is_kthread else task.comm.encode("utf-8", "surrogateescape") + b"\0"


def _host_file(pid: int, name: str):
    def show(req: Request) -> bytes:
        with open(f"{HOST_PROC}/{pid}/{name}", "rb") as f:
            return f.read()
    return show


@per_object
def _task_dir(task: Task) -> Dir:
    def stack(req: Request) -> str:
        if not req.capable:  # proc_pid_stack() wants CAP_SYS_ADMIN, whoever owns the file
            raise OSError(errno.EACCES, "stack")
        return "".join(f"[<0>] {frame}\n" for frame in stack_trace(task.stack, task.kind is TaskKind.KTHREAD))

    def comm_write(req: Request, data: bytes) -> int:
        """comm_write(): a process may rename its own threads only; the name is
        the first TASK_COMM_LEN - 1 bytes, up to a NUL, newline and all."""
        if req.kernel.tasks.get(task.pid) is not task:
            return -errno.ESRCH
        if req.task.tgid != task.tgid:
            return -errno.EINVAL
        task.comm = data[:TASK_COMM_LEN - 1].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return 0

    def owner(req: Request) -> int:  # procfs: the process's files are its own
        return host_euid(task.pid) if task.external else 0  # a model task is the kernel's

    files: list[tuple[str, Node]] = [
        ("comm", Attr(perm=0o644, st_size=0, show=lambda req: f"{task.comm}\n", store=comm_write, owner=owner)),
        ("patch_state", Attr(perm=0o400, st_size=0, show=lambda req: f"{task.patch_state}\n", owner=owner)),
        ("stack", Attr(perm=0o400, st_size=0, show=stack, owner=owner)),
    ]
    if task.external:  # a host process: what the host's procfs says
        files += [(n, Attr(st_size=0, show=_host_file(task.pid, n), owner=owner)) for n in ("cmdline", "stat", "status")]
    else:
        files += [
            ("cmdline", Attr(st_size=0, show=lambda req: _pid_cmdline(task), owner=owner)),
            ("stat", Attr(st_size=0, show=lambda req: _pid_stat(task), owner=owner)),
            ("status", Attr(st_size=0, show=lambda req: _pid_status(task, req.kernel.ncpus), owner=owner)),
        ]
    thread = Dir(perm=0o555, entries=lambda req: files)  # model tasks are single-threaded
    tasks = Dir(perm=0o555, entries=lambda req: [(str(task.pid), thread)])
    return Dir(perm=0o555, entries=lambda req: files + [("task", tasks)])


def _lookup_pid(req: Request, name: str) -> Node | None:
    """/proc/<pid> of a process or of any thread (name_to_int(): digits only,
    no leading zero)."""
    if not name.isdigit() or name[0] == "0":
        return None
    task = req.kernel.tasks.get(int(name))
    return _task_dir(task) if task is not None else None


_DOULONG = re.compile(rb"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?:\s.*)?\Z", re.DOTALL)


def parse_doulong(data: bytes) -> int | None:
    """proc_doulongvec_minmax() for a single value: C's strtoul with base 0,
    ended by whitespace or the end; a sign or anything else is EINVAL."""
    m = _DOULONG.match(data)
    if m is None:
        return None
    digits = m.group(1)
    base = 16 if digits[:2] in (b"0x", b"0X") else 8 if digits.startswith(b"0") else 10
    value = int(digits, base)
    return value if value < 1 << 64 else None


def _tainted_store(req: Request, data: bytes) -> int:
    """proc_taint(): CAP_SYS_ADMIN only, and taint is never cleared."""
    if not req.capable:
        return -errno.EPERM
    value = parse_doulong(data)
    if value is None:
        return -errno.EINVAL
    add_taint_mask(req.kernel, value)
    return 0


def _proc_modules(req: Request) -> str:
    # kallsyms_show_value(): addresses for the privileged, zeros for others
    return "".join(mod.proc_modules_line(show_address=req.capable) + "\n"
                   for mod in reversed(list(req.kernel.modules.modules.values()))
                   if mod.state is not ModuleState.UNFORMED)


def _ftrace_enabled_store(req: Request, data: bytes) -> int:
    value = parse_dointvec(data)
    if value is None:
        return -errno.EINVAL
    return req.kernel.ftrace.set_sysctl(value)


def proc_dir() -> Dir:
    sys_kernel = Dir(perm=0o555, entries=lambda req: [
        ("ftrace_enabled", Attr(perm=0o644, st_size=0, show=lambda r: f"{r.kernel.ftrace.sysctl}\n",
                                store=_ftrace_enabled_store)),
        ("tainted", Attr(perm=0o644, st_size=0, show=lambda r: f"{r.kernel.modules.tainted}\n",
                         store=_tainted_store)),
    ])
    sys_dir = Dir(perm=0o555, entries=lambda req: [("kernel", sys_kernel)])

    def entries(req: Request) -> Iterable[tuple[str, Node]]:
        k = req.kernel
        yield "cmdline", Attr(st_size=0, show=lambda r: k.call(r.task, "vmlinux", "cmdline_proc_show"))
        yield "meminfo", Attr(st_size=0, show=lambda r: k.call(r.task, "vmlinux", "meminfo_proc_show"))
        yield "version", Attr(st_size=0, show=lambda r: k.call(r.task, "vmlinux", "version_proc_show"))
        yield "kallsyms", Attr(st_size=0, show=lambda r: r.kernel.kallsyms())
        yield "modules", Attr(st_size=0, show=_proc_modules)
        yield "self", Symlink(target=lambda r: str(r.task.tgid))
        yield "sys", sys_dir
        for name, (_, mode, show) in list(k.proc_entries.items()):
            yield name, Attr(perm=mode, st_size=0,
                             show=lambda r, f=show: r.kernel.call(r.task, f.obj, f.name))
        for task in sorted(k.tasks.tasks.values(), key=lambda t: t.pid):
            if task.pid == task.tgid:
                yield str(task.pid), _task_dir(task)

    return Dir(perm=0o555, entries=entries, child=_lookup_pid)
