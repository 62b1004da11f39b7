"""The model machine: one object that owns every subsystem and the clock.

Everything above the model (the filesystem, the runtime, tests) talks to a
:class:`Kernel`.  A request from user space is a *syscall* of a task: it
enters the kernel, runs model code on that task's stack, and returns to user
space -- where a pending livepatch switch happens, as on a real kernel.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import attrs

from .clock import NSEC_PER_SEC, Clock, WorkQueue
from .ftrace import Ftrace
from . import panic
from .jump_label import JumpLabels
from .text import Text
from .livepatch import Livepatch
from .livepatch.consistency import ConsistencyModel
from .livepatch.transition import klp_copy_process, klp_new_task, klp_task_exit, klp_update_patch_state
from .moddef import ModuleDef
from .modules import Module, ModuleLoader
from .printk import KERN_ERR, KERN_NOTICE, DynamicDebug, Printk
from .symbols import VMLINUX, VMLINUX_SIZES, KFunc, SymbolTable, module_symbols
from .kprobes import Kprobes
from .livepatch.shadow import ShadowTable
from .sched import Scheduler
from .trace import FunctionTracer
from .tasks import (DEFAULT_PID_BASE, PID_MAX_DEFAULT, RESERVED_PIDS, RunState, Task, TaskKind, TaskList)
from .version import MAINLINE, KernelVersion

DEFAULT_CMDLINE = "BOOT_IMAGE=/boot/vmlinuz-livefs root=/dev/vda1 ro console=ttyS0 quiet"

DEFAULT_MEMINFO = """\
MemTotal:        8139212 kB
MemFree:         6021344 kB
MemAvailable:    7452908 kB
Buffers:           52140 kB
Cached:          1496312 kB
SwapCached:            0 kB
Active:           784120 kB
Inactive:         960284 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               108 kB
Writeback:             0 kB
AnonPages:        196012 kB
Mapped:           161520 kB
Shmem:              9884 kB
Slab:             140736 kB
KernelStack:        3968 kB
PageTables:         5636 kB
CommitLimit:     4069604 kB
Committed_AS:    1104952 kB
VmallocTotal:   34359738367 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


class FunctionFault(Exception):
    """A function body raised; the syscall that ran it fails with EFAULT."""

    errno = 14


@attrs.define
class CallContext:
    """Passed to every function body: who is calling, and the machine."""

    kernel: "Kernel"
    task: Task
    func: KFunc

    @property
    def module(self):
        mod = self.kernel.modules.get(self.func.obj)
        return mod.ctx if mod is not None else None

    def static_branch(self, key: str) -> bool:
        """static_branch_likely/unlikely(&key) at this function's site: what
        the text there says right now."""
        return self.kernel.jump_labels.site_value(self.func, key)

    # -- sleeping where the body is (kthreads started with kthread_run() only) --------
    def msleep(self, ms: int) -> None:
        """msleep(ms): the task sleeps uninterruptibly inside this function
        (and every caller on its stack) for ``ms`` of model time."""
        self.kernel.sched.kthreads.sleep(self.task, ms, "msleep")

    def schedule_timeout(self, ms: int | None = None, freezable: bool = False) -> int:
        """set_current_state(TASK_INTERRUPTIBLE [| TASK_FREEZABLE]);
        schedule_timeout(): sleep until wake_up_process() or ``ms`` (None: no
        timeout); the ms left."""
        return self.kernel.sched.kthreads.sleep(self.task, ms, "schedule", freezable)

    def kthread_should_stop(self) -> bool:
        kt = self.kernel.sched.kthreads.of(self.task)
        return kt is not None and kt.should_stop


# Kernel functions that tasks sleep or run in; bodies matter only for the
# ones a file or syscall reaches (/proc/cmdline, /proc/meminfo, getpid).
_SCHED_FUNCS = [
    "do_syscall_64", "schedule", "__schedule", "do_idle", "cpu_startup_entry", "kthread",
    "kthreadd", "smpboot_thread_fn", "worker_thread", "rcu_gp_kthread", "do_epoll_wait",
    "ep_poll", "__x64_sys_epoll_wait", "ksys_read", "vfs_read", "ksys_write", "vfs_write",
    "seq_read_iter", "proc_reg_read_iter", "kernfs_fop_read_iter", "kernfs_fop_write_iter",
    "__do_sys_finit_module", "__x64_sys_delete_module", "load_module", "do_init_module",
    "do_wait", "kernel_wait4", "__x64_sys_wait4", "cond_resched", "msleep",
    "process_one_work", "devkmsg_read", "devkmsg_write",
]
# the ones that are static in their file in 6.12 (kallsyms 't')
_STATIC_FUNCS = {
    "__schedule", "do_idle", "kthread", "smpboot_thread_fn", "worker_thread", "rcu_gp_kthread", "do_epoll_wait",
    "ep_poll", "proc_reg_read_iter", "kernfs_fop_read_iter", "kernfs_fop_write_iter", "__do_sys_finit_module",
    "load_module", "do_init_module", "process_one_work", "devkmsg_read", "devkmsg_write",
}


def _cmdline_proc_show(call: CallContext) -> str:
    return call.kernel.cmdline + "\n"


def _meminfo_proc_show(call: CallContext) -> str:
    return call.kernel.meminfo()


def _sys_getpid(call: CallContext) -> int:
    return call.task.tgid


def _version_proc_show(call: CallContext) -> str:
    """fs/proc/version.c: seq_printf(m, linux_proc_banner, utsname()->sysname,
    utsname()->release, utsname()->version)."""
    u = call.kernel.utsname
    return call.kernel.linux_proc_banner % (u.sysname, u.release, u.version)


@attrs.frozen
class UtsName:
    """What uname(2) and /proc/version report (init_uts_ns)."""

    sysname: str
    release: str
    version: str


# init/version.c's build identity (include/generated/compile.h): x86_64 Debian 12's toolchain
LINUX_COMPILE_BY = "livefs"
LINUX_COMPILE_HOST = "livefs"
LINUX_COMPILER = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40"
UTS_VERSION = "#1 SMP PREEMPT_DYNAMIC livefs"


class Kernel:
    def __init__(self, version: KernelVersion = MAINLINE, ncpus: int = 2,
                 cmdline: str = DEFAULT_CMDLINE, boot_ns: int = 0,
                 meminfo: Callable[[], str] | None = None, pid_base: int = DEFAULT_PID_BASE,
                 consistency_model: ConsistencyModel = ConsistencyModel.HYBRID,
                 pid_max: int | None = None, pid_taken: Callable[[int], bool] | None = None) -> None:
        """``pid_base``: where the model's pids start; ``pid_max``: the
        machine's /proc/sys/kernel/pid_max, below which every pid stays
        (default PID_MAX_DEFAULT); ``pid_taken``: the pids held outside the
        model (a live mount's host processes share its pid space), never
        handed out."""
        self.version = version
        self.ncpus = ncpus
        self.cmdline = cmdline
        self.meminfo: Callable[[], str] = meminfo or (lambda: DEFAULT_MEMINFO)
        self.clock = Clock(boot_ns)
        self.wq = WorkQueue(self.clock)
        self.printk = Printk(self.clock)
        self.dyndbg = DynamicDebug()
        self.symbols = SymbolTable()
        self._entry_funcs: dict[str, KFunc] = {}  # syscall entry points, looked up once
        self.utsname = UtsName("Linux", version.release, UTS_VERSION)
        self.tasks = TaskList(next_pid=pid_base, pid_max=pid_max or PID_MAX_DEFAULT, taken=pid_taken)
        self.text = Text()
        self.ftrace = Ftrace(self.text)
        self.jump_labels = JumpLabels(self)
        self.modules = ModuleLoader(self)
        self.livepatch = Livepatch(self, model=consistency_model)
        self.tracer = FunctionTracer(self)
        self.sched = Scheduler(self)
        self.shadow = ShadowTable(self)
        self.console_loglevel = 7
        self.kprobes = Kprobes(self)
        self.proc_entries: dict[str, tuple[Module | None, int, KFunc]] = {}
        self.current: Task | None = None
        self.reboot_requested = False  # mock-only: the runtime boots a fresh machine
        self.warned_once: set[str] = set()  # the WARN_ON_ONCE() sites that fired this boot
        self.kernel_dirs: dict[str, tuple[Module | None, dict[str, Any]]] = {}
        self._boot()

    # -- boot -------------------------------------------------------------------
    @property
    def linux_proc_banner(self) -> str:
        return f"%s version %s ({LINUX_COMPILE_BY}@{LINUX_COMPILE_HOST}) ({LINUX_COMPILER}) %s\n"

    @property
    def linux_banner(self) -> str:
        u = self.utsname
        return f"Linux version {u.release} ({LINUX_COMPILE_BY}@{LINUX_COMPILE_HOST}) ({LINUX_COMPILER}) {u.version}\n"

    def _boot(self) -> None:
        # start_kernel(): pr_notice("%s", linux_banner), the first record of the log, at time 0
        self.printk.log(KERN_NOTICE, self.linux_banner.rstrip("\n"), ts_ns=0)
        for name in _SCHED_FUNCS:
            self.symbols.add(KFunc(name, static=name in _STATIC_FUNCS, size=VMLINUX_SIZES.get(name, 0x40)))
        self.symbols.add(KFunc("cmdline_proc_show", body=_cmdline_proc_show, static=True))
        self.symbols.add(KFunc("meminfo_proc_show", body=_meminfo_proc_show, static=True))
        self.symbols.add(KFunc("version_proc_show", body=_version_proc_show, static=True))
        self.symbols.add(KFunc("__x64_sys_getpid", body=_sys_getpid))
        self.symbols.add(KFunc("printk", notrace=True))
        # v6.4+: a scheduling point (cond_resched(), or __schedule() from v6.16)
        # tries a livepatch switch only while this key is on
        where = self.version.klp_sched_switch
        if where is not None:
            key = self.jump_labels.define("klp_sched_try_switch_key", default=False)
            self.jump_labels.add_site(self.vmlinux_func(where), key)
        f = self.vmlinux_func
        init = Task(1, "systemd", TaskKind.USER)
        init.stack = [f("do_syscall_64"), f("__x64_sys_epoll_wait"), f("do_epoll_wait"), f("ep_poll"),
                      f("schedule")]
        self.tasks.add(init)
        # kthreadd is kernel_thread()'s child of rest_init(), not one of kthread()'s
        self.tasks.add(Task(2, "kthreadd", TaskKind.KTHREAD, ppid=0, stack=[f("kthreadd"), f("schedule")]))
        self.tasks.add(Task(3, "rcu_preempt", TaskKind.KTHREAD, ppid=2,
                            stack=[f("kthread"), f("rcu_gp_kthread"), f("schedule")]))
        pid = 4
        for cpu in range(self.ncpus):
            for comm, fn in ((f"ksoftirqd/{cpu}", "smpboot_thread_fn"), (f"migration/{cpu}", "smpboot_thread_fn"),
                             (f"kworker/{cpu}:1", "worker_thread")):
                self.tasks.add(Task(pid, comm, TaskKind.KTHREAD, ppid=2,
                                    stack=[f("kthread"), f(fn), f("schedule")]))
                pid += 1
        for cpu in range(self.ncpus):
            self.tasks.idle.append(Task(0, f"swapper/{cpu}", TaskKind.IDLE, cpu=cpu, state=RunState.RUNNING,
                                        stack=[f("cpu_startup_entry"), f("do_idle")]))

    # data symbols /proc/kallsyms lists besides the functions (tools probe for them)
    DATA_SYMBOLS = ("kprobe_ftrace_ops", "kprobe_ipmodify_ops", "klp_transition_work", "klp_patches")

    VMLINUX_TEXT = 0xFFFFFFFF81000000
    VMLINUX_DATA = 0xFFFFFFFF82000000
    PADDING = 16  # CONFIG_FUNCTION_PADDING_ALIGNMENT: __pfx_<name> fills the 16 bytes before each function

    def kallsyms(self) -> str:
        """/proc/kallsyms as x86_64 Debian's 6.12 has it: vmlinux text (``T``
        global, ``t`` static, each function after its ``__pfx_`` padding
        symbol), vmlinux data, then each module's text at its own address in
        module space, newest module first.  A module symbol is lowercase
        unless exported (kallsyms s_show()); the model exports none.  Each
        module's other symbols follow its text (symbols.module_symbols())."""
        lines = []

        def text(funcs: list[KFunc], addr: int, where: str, local: bool) -> None:
            for f in funcs:
                kind = "t" if local or f.static else "T"
                lines.append(f"{addr:016x} {kind} __pfx_{f.name}{where}")
                lines.append(f"{addr + self.PADDING:016x} {kind} {f.name}{where}")
                addr += self.PADDING + -(-f.size // self.PADDING) * self.PADDING

        text(self.symbols.functions(VMLINUX), self.VMLINUX_TEXT, "", False)
        lines += [f"{self.VMLINUX_DATA + 0x40 * i:016x} d {name}" for i, name in enumerate(self.DATA_SYMBOLS)]
        loaded = {name: mod.base for name, mod in self.modules.modules.items()}
        others = [obj for obj in self.symbols.objects if obj != VMLINUX and obj not in loaded]
        for obj in [*reversed(list(loaded)), *others]:
            base = loaded.get(obj) or self.modules.MODULES_VADDR
            text(self.symbols.functions(obj), base, f"\t[{obj}]", True)
            mod = self.modules.modules.get(obj)
            if mod is not None:  # the rest of its symbol table, after its text
                extra = module_symbols(mod.defn, mod.init_kept)
                lines += [f"{base + 0x2000 + 0x10 * i:016x} {kind} {name}\t[{obj}]"
                          for i, (kind, name) in enumerate(extra)]
        return "\n".join(lines) + "\n"

    HZ = 250
    INITIAL_JIFFIES = (-300 * HZ) & 0xFFFFFFFF

    def jiffies(self) -> int:
        return self.INITIAL_JIFFIES + self.clock.now_ns * self.HZ // NSEC_PER_SEC

    def add_vmlinux_function(self, name: str, body: Any, notrace: bool = False, static: bool = False) -> KFunc:
        """Declare more vmlinux code (for modelling the code a fix touches);
        ``static`` for a file-local function (kallsyms ``t``)."""
        return self.symbols.add(KFunc(name, VMLINUX, body=body, notrace=notrace, static=static))

    def vmlinux_func(self, name: str) -> KFunc:
        return self.symbols.find(VMLINUX, name)[0]

    # -- time -------------------------------------------------------------------
    def run_until(self, t_ns: int) -> int:
        return self.wq.run_until(t_ns)

    def advance(self, ns: int) -> int:
        return self.run_until(self.clock.now_ns + ns)

    def run_pending(self) -> int:
        """Run work that is already due (zero-delay work such as freeing)."""
        return self.wq.run_until(self.clock.now_ns)

    def settle(self, limit_s: int = 120) -> None:
        """Advance model time until no transition or work is pending (tests)."""
        end = self.clock.now_ns + limit_s * NSEC_PER_SEC
        while self.clock.now_ns < end:
            due = self.wq.next_deadline()
            if due is None:
                return
            self.run_until(due)

    # -- printk -------------------------------------------------------------------
    def printk_task(self, level: int, text: str) -> None:
        caller = f"T{self.current.pid}" if self.current is not None else "T0"
        self.printk.log(level, text, caller=caller)

    def module_bug(self, owner: str, where: str, exc: BaseException, ret: int) -> int:
        """Python code of a module raised: say so in the log (a real kernel
        would oops) and carry on with ``ret``."""
        self.printk_task(KERN_ERR, f"livefs: {owner}: {where} raised {type(exc).__name__}: {exc}")
        self.modules.last_error = f"{owner}: {where} raised {type(exc).__name__}: {exc}"
        return ret

    def warn(self, message: str, where: str = "kernel/livepatch/shadow.c:156") -> None:
        """WARN(): cut-here, the message (no pr_fmt), the splat, TAINT_WARN."""
        panic.warn(self, message, where)

    # -- tasks and syscalls ---------------------------------------------------------
    def task_for(self, pid: int, comm: str = "", ppid: int = 0, tgid: int = 0) -> Task:
        """The task of a real process, created on first contact."""
        task = self.tasks.get(pid)
        if task is not None:
            if comm:
                task.comm = comm[:15]
            return task
        task = Task(pid, (comm or f"pid{pid}")[:15], TaskKind.USER, tgid=tgid, ppid=ppid, external=True,
                    state=RunState.USER)
        parent = self.tasks.get(ppid) if ppid else None
        if parent is not None:
            klp_copy_process(self.livepatch, parent, task)
        elif self.livepatch.in_transition():
            # a process the model meets mid-transition has been in user space
            # (or in unrelated kernel code) all along: every stack check so far
            # would have switched it
            klp_new_task(self.livepatch, task, self.livepatch.target_state, False)
        return self.tasks.add(task)

    def exit_task(self, pid: int) -> None:
        task = self.tasks.get(pid)
        if task is not None:
            klp_task_exit(self.livepatch, task)
        self.tasks.remove(pid)

    @contextlib.contextmanager
    def syscall(self, task: Task, entry: str = "do_syscall_64") -> Iterator[Task]:
        """A task enters the kernel; on the way back out it may switch."""
        outer = self.syscall_enter(task, entry)
        try:
            yield task
        finally:
            self.syscall_exit(task, outer)

    def syscall_enter(self, task: Task, entry: str = "do_syscall_64") -> tuple[Task | None, int]:
        """The first half of :meth:`syscall`, for callers on a hot path (every
        FUSE request); hand what it returns to :meth:`syscall_exit`."""
        outer = self.current
        self.current = task
        task.in_syscall = True
        task.state = RunState.RUNNING
        base = len(task.stack)
        func = self._entry_funcs.get(entry)
        if func is None:
            func = self._entry_funcs[entry] = self.vmlinux_func(entry)
        task.stack.append(func)
        return outer, base

    def syscall_exit(self, task: Task, entered: tuple[Task | None, int]) -> None:
        outer, base = entered
        del task.stack[base:]
        task.in_syscall = False
        task.state = RunState.USER if not task.stack else RunState.SLEEPING
        self.current = outer
        klp_update_patch_state(self.livepatch, task)  # exit_to_user_mode
        self.run_pending()

    @contextlib.contextmanager
    def in_function(self, obj: str, name: str) -> Iterator[None]:
        task = self.current
        if task is None:
            yield
            return
        found = self.symbols.find(obj, name)
        task.stack.append(found[0] if found else KFunc(name, obj))
        try:
            yield
        finally:
            task.stack.pop()

    @contextlib.contextmanager
    def kworker(self, cpu: int = 0) -> Iterator[Task]:
        worker = next((t for t in self.tasks.tasks.values() if t.comm == f"kworker/{cpu}:1"), None)
        outer = self.current
        self.current = worker
        try:
            yield worker  # type: ignore[misc]
        finally:
            self.current = outer

    def call(self, task: Task, obj: str, name: str, *args: Any) -> Any:
        """``task`` calls ``obj:name``; ftrace may redirect it (livepatch)."""
        funcs = self.symbols.find(obj, name)
        if not funcs:
            raise LookupError(f"no function {name} in {obj}")
        target = self.ftrace.dispatch(task, funcs[0])
        task.stack.append(target)
        try:
            return target.body(CallContext(self, task, target), *args)
        except LookupError:
            raise
        except Exception as exc:
            self.module_bug(target.obj, target.name, exc, 0)
            raise FunctionFault(target.name) from exc
        finally:
            if not self.sched.is_blocked(task):  # a blocked task stays inside
                task.stack.pop()

    # -- modules ---------------------------------------------------------------------
    def load_module(self, defn: ModuleDef, args: str = "") -> int:
        """init_module(2), from the caller's syscall (its stack shows load_module)."""
        with self.in_function(VMLINUX, "load_module"):
            return self.modules.load(defn, args)

    def delete_module(self, name: str) -> int:
        return self.modules.delete(name)

    def module_freed(self, mod: Module) -> None:
        for name, (owner, _) in list(self.kernel_dirs.items()):
            if owner is mod:
                del self.kernel_dirs[name]
        for name, entry in list(self.proc_entries.items()):
            if entry[0] is mod:
                del self.proc_entries[name]

    def proc_create_single(self, owner: Module | None, name: str, show: KFunc, mode: int = 0o444) -> None:
        """A /proc/<name> file whose content is what ``show`` returns when the
        reading task calls it (so livepatching ``show`` changes the file)."""
        self.proc_entries[name] = (owner, mode, show)

    def remove_proc_entry(self, name: str) -> None:
        self.proc_entries.pop(name, None)

    def add_kernel_dir(self, owner: Module | None, name: str, attrs_: dict[str, Any]) -> None:
        """kobject_create_and_add(name, kernel_kobj) with attributes:
        ``attrs_`` maps a file name to ``(mode, show)``."""
        self.kernel_dirs[name] = (owner, attrs_)
