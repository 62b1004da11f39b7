"""Functions of the model machine: vmlinux and module text.

A :class:`KFunc` is the unit livepatch and ftrace reason about: it has an
object (``vmlinux`` or a module name), a position among equally named symbols
of that object (sympos), a size, and a body -- the Python callable that runs
when a task calls it.  Call stacks of tasks are lists of KFuncs, so "is this
task sleeping in that function" is an identity test, like the kernel's
address-range test.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

import attrs

VMLINUX = "vmlinux"

Body = Callable[..., Any]


def _no_body(ctx: Any, *args: Any) -> None:
    return None


@attrs.define(eq=False, repr=False)
class KFunc:
    name: str
    obj: str = VMLINUX
    body: Body = _no_body
    size: int = 0x40
    notrace: bool = False
    sympos: int = 1  # 1-based position among same-named symbols of the object
    static: bool = False  # file-local: kallsyms type 't' rather than 'T'
    # return offsets of its call sites, by the callee's name ("*": any callee),
    # as a stack trace shows this function's frame
    calls: dict[str, int] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<KFunc {self.name} [{self.obj}]>"

    @property
    def traceable(self) -> bool:
        return not self.notrace


# -- stack traces (/proc/PID/stack, dump_stack) ----------------------------------------------
# Sizes and call sites are those of Debian's 6.12.95 x86_64 build (the oracle's
# kernel), as its traces print them (``name+0xOFFSET/0xSIZE``): recorded in
# tests/transcripts/6.12 (internals, callbacks) and used for every version.

VMLINUX_SIZES = {
    "msleep": 0x40, "kthread": 0x100, "kthreadd": 0x2f0, "smpboot_thread_fn": 0x1d0,
    "rcu_gp_kthread": 0x190, "rcu_gp_fqs_loop": 0x530, "do_syscall_64": 0x1b0,
    "ret_from_fork": 0x50, "ret_from_fork_asm": 0x30, "entry_SYSCALL_64_after_hwframe": 0x7e,
    "proc_pid_stack": 0x120, "proc_single_show": 0xc0, "seq_read_iter": 0x470, "seq_read": 0x160,
    "vfs_read": 0x370, "ksys_read": 0xf0, "dump_stack_lvl": 0x80, "do_init_module": 0x270,
    "init_module_from_file": 0xe0, "idempotent_init_module": 0x310, "__x64_sys_finit_module": 0xb0,
}

# (caller, callee or "*") -> the return address's offset in the caller
VMLINUX_CALLS = {
    ("msleep", "*"): 0x2b,              # schedule_timeout_uninterruptible()
    ("kthread", "*"): 0xd2,             # threadfn(data)
    ("kthreadd", "*"): 0x2d3,           # schedule()
    ("smpboot_thread_fn", "*"): 0x14c,  # schedule()
    ("rcu_gp_kthread", "rcu_gp_fqs_loop"): 0xd7,
    ("rcu_gp_fqs_loop", "*"): 0x140,    # swait_event_idle_timeout_exclusive()
    ("do_syscall_64", "*"): 0x87,       # x64_sys_call()'s tail call of the __x64_sys_ entry
    ("ksys_read", "*"): 0x6f, ("vfs_read", "*"): 0xeb, ("seq_read", "*"): 0x12d,
    ("seq_read_iter", "*"): 0x123, ("proc_single_show", "*"): 0x54, ("proc_pid_stack", "*"): 0xaf,
    ("do_init_module", "*"): 0x8e, ("init_module_from_file", "*"): 0x89,
    ("idempotent_init_module", "*"): 0x11d, ("__x64_sys_finit_module", "*"): 0x5e,
}

# __sched functions (.sched.text): stack_trace_save_tsk() of another task
# leaves them out (consume_entry_nosched(), in_sched_functions())
SCHED_TEXT = frozenset({"schedule", "__schedule", "schedule_timeout", "schedule_timeout_uninterruptible",
                        "cond_resched", "__cond_resched", "schedule_hrtimeout", "io_schedule"})

# frames the model does not keep between a function and the schedule() it
# sleeps in (the task sleeps in them all the same)
IMPLIED_CALLEES = {"rcu_gp_kthread": ("rcu_gp_fqs_loop",)}

# where every kthread's stack starts (arch/x86/entry/entry_64.S, process.c)
KTHREAD_BOTTOM = ("ret_from_fork+0x34/0x50", "ret_from_fork_asm+0x1a/0x30")
# where a syscall's starts
SYSCALL_BOTTOM = ("entry_SYSCALL_64_after_hwframe+0x76/0x7e",)


def call_offset(caller: "KFunc | str", callee: str | None) -> int:
    """Where ``caller``'s frame returns to after calling ``callee``: the
    declared (``Function.calls``) or recorded site; +0x0 for a call site
    nobody declared (no real return address is there: it marks the unknown)."""
    if isinstance(caller, KFunc):
        name, obj = caller.name, caller.obj
        found = caller.calls.get(callee or "*", caller.calls.get("*"))
        if found is not None:
            return found
    else:
        name, obj = caller, VMLINUX
    if obj == VMLINUX:
        return VMLINUX_CALLS.get((name, callee or "*"), VMLINUX_CALLS.get((name, "*"), 0))
    return 0


def frame_text(name: str, obj: str, offset: int, size: int) -> str:
    return f"{name}+0x{offset:x}/0x{size:x}" + ("" if obj == VMLINUX else f" [{obj}]")


def stack_trace(frames: list["KFunc"], kthread: bool) -> list[str]:
    """A task's model stack (outermost first) as stack_trace_save_tsk()
    prints it, innermost first: scheduler functions left out, each frame at
    the return address of its call, and the entry code below the first
    frame (ret_from_fork for a kthread, the syscall entry for a task in a
    syscall)."""
    out: list[str] = []
    for i in range(len(frames) - 1, -1, -1):
        f = frames[i]
        if f.name in SCHED_TEXT:
            continue
        callee = frames[i + 1].name if i + 1 < len(frames) else None
        if f.obj == VMLINUX and f.name in IMPLIED_CALLEES and (callee is None or callee in SCHED_TEXT):
            for name in reversed(IMPLIED_CALLEES[f.name]):
                out.append(frame_text(name, VMLINUX, call_offset(name, callee), VMLINUX_SIZES.get(name, 0x40)))
                callee = name
        out.append(frame_text(f.name, f.obj, call_offset(f, callee), f.size))
    if frames and kthread and frames[0].name in ("kthread", "kthreadd"):
        out += KTHREAD_BOTTOM
    elif frames and frames[0].name == "do_syscall_64":
        out += SYSCALL_BOTTOM
    return out


@attrs.define
class SymbolTable:
    """kallsyms: per object, the ordered list of its functions."""

    objects: dict[str, list[KFunc]] = attrs.field(factory=dict)

    def add(self, func: KFunc) -> KFunc:
        funcs = self.objects.setdefault(func.obj, [])
        func.sympos = 1 + sum(1 for f in funcs if f.name == func.name)
        funcs.append(func)
        return func

    def discard(self, func: KFunc) -> None:
        """A freed patch lets go of a replacement function.  Its code is the
        module's text, though: the symbol stays (in kallsyms, in ftrace's
        records) until the module itself is freed (:meth:`remove_object`).
        Only vmlinux code declared at run time is dropped here."""
        funcs = self.objects.get(func.obj, [])
        if func.obj == VMLINUX and func in funcs:
            funcs.remove(func)

    def remove_object(self, obj: str) -> None:
        self.objects.pop(obj, None)

    def functions(self, obj: str) -> list[KFunc]:
        return list(self.objects.get(obj, []))

    def find(self, obj: str, name: str) -> list[KFunc]:
        return [f for f in self.objects.get(obj, []) if f.name == name]

    def lookup(self, obj: str, name: str, sympos: int) -> tuple[KFunc | None, int, str | None]:
        """klp_find_object_symbol(): (func, 0, None) or (None, -errno, message)."""
        matches = self.find(obj, name)
        if not matches:
            return None, -errno.EINVAL, f"symbol '{name}' not found in symbol table"
        if sympos == 0:
            if len(matches) > 1:
                objname = "(null)" if obj == VMLINUX else obj
                return None, -errno.EINVAL, (
                    f"unresolvable ambiguity for symbol '{name}' in object '{objname}'")
            return matches[0], 0, None
        if sympos > len(matches):
            return None, -errno.EINVAL, (
                f"symbol position {sympos} for symbol '{name}' in object '{obj}' not found")
        return matches[sympos - 1], 0, None


# -- a module's symbols besides its functions (/proc/kallsyms) --------------------------------

_PARAM_OPS = {"int": ["param_ops_int"], "uint": ["param_ops_uint"], "bool": ["param_ops_bool"],
              "charp": ["param_ops_charp"], "int_array": ["param_array_ops", "param_ops_int"]}


def module_symbols(defn: Any, init_kept: bool) -> list[tuple[str, str]]:
    """(type, name) of what a loaded module's symbol table shows besides its
    declared functions, as x86_64 Debian's 6.12 (gcc, kbuild) builds it.

    add_kallsyms() keeps only the core symbols of an ordinary module: data
    (``__this_module``, the alloc-tag bounds, parameter variables: ``d`` when
    initialised, ``b`` when zero), rodata (``__param_*``, the ELF notes
    ``_note_18``/``_note_19``, ``orc_header``) and the exit code
    (``cleanup_module`` aliasing the module_exit() function, with their
    ``__pfx_``); init code and the rest are dropped.  A livepatch module
    keeps its whole symbol table (klp relocations need it): also the init
    code (``init_module``), the ``.modinfo`` strings (``?``), the source file
    names (``a``) and the undefined symbols (``u``).  An init function freed
    while any ftrace ops was registered is listed once more, ``T``, by
    ftrace's mod_map (ftrace_free_mem(), ftrace_mod_get_kallsym())."""
    st = defn.symtab
    livepatch = defn.livepatch
    has_init = defn.init is not None or defn.patch is not None
    init = st.init or f"{defn.name}_init"
    exit_ = st.exit or f"{defn.name}_exit"
    out = [("d", "__this_module"), ("d", "__start_alloc_tags"), ("d", "__stop_alloc_tags"),
           ("r", "_note_18"), ("r", "_note_19"), ("r", "orc_header")]
    for p in defn.params:
        out += [("r", f"__param_{p.name}"), ("r", f"__param_str_{p.name}")]
        if p.get is None:  # module_param_cb() has no variable of its own
            out.append(("d" if p.default else "b", p.name))
    out += [("d", n) for n in st.data] + [("b", n) for n in st.bss]
    if defn.exit is not None:
        out += [("t", "__pfx_cleanup_module"), ("t", "cleanup_module"), ("t", f"__pfx_{exit_}"), ("t", exit_)]
    for key, n in st.unique_ids.items():
        if key == "__addressable_cleanup_module" and defn.exit is not None:
            out.append(("d", f"__UNIQUE_ID_{key}{n}"))
        elif livepatch and key == "__addressable_init_module" and has_init:
            out.append(("d", f"__UNIQUE_ID_{key}{n}"))
        elif livepatch and not key.startswith("__addressable_"):
            out.append(("?", f"__UNIQUE_ID_{key}{n}"))
    if livepatch:
        if has_init:
            out += [("t", "__pfx_init_module"), ("t", "init_module"), ("t", f"__pfx_{init}"), ("t", init)]
        out += [("?", "____versions"), ("a", f"{defn.name}.c"), ("a", f"{defn.name}.mod.c"),
                ("a", "module-common.c")]
        undefined = ["__fentry__", "__x86_return_thunk", "klp_enable_patch"]
        for p in defn.params:
            undefined += [] if p.get is not None else _PARAM_OPS.get(p.type, [])
        undefined += list(defn.imports) + list(st.undefined)
        out += [("u", n) for n in dict.fromkeys(undefined)]
    if init_kept and has_init:
        out.append(("T", init))
    return out
