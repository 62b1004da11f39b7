"""The module loader: insert, init, live, exit, remove.

Loading follows load_module()/do_init_module(): taints are applied (with their
once-per-boot messages), undefined symbols are resolved, the module's symbols
appear, livepatch's coming hook and the module notifiers run, parameters are
parsed, then ``init``.  A failing init unwinds
through the going notifier; a *positive* init return keeps the module, with
the loader's warning, exactly as the kernel does.
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Any

import attrs

from .moddef import (PAGE_SIZE, Func, ModuleDef, Patch, module_init_size, module_notes, module_sections, module_size,
                     validate, validate_patch)
from .panic import FINIT_MODULE_USER_REGS, init_module_path, print_dump_stack
from .params import ParamValue, split_args
from .printk import KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING
from .symbols import VMLINUX, KFunc

if TYPE_CHECKING:
    from .kernel import Kernel


class ModuleState(enum.Enum):
    LIVE = "live"
    COMING = "coming"
    GOING = "going"
    UNFORMED = "unformed"

    @property
    def kernel_string(self) -> str:
        """How test_klp_callbacks_demo prints a module state."""
        return {
            ModuleState.LIVE: "[MODULE_STATE_LIVE] Normal state",
            ModuleState.COMING: "[MODULE_STATE_COMING] Full formed, running module_init",
            ModuleState.GOING: "[MODULE_STATE_GOING] Going away",
            ModuleState.UNFORMED: "[MODULE_STATE_UNFORMED] Still setting it up",
        }[self]


TAINT_FORCED_RMMOD, TAINT_OOT_MODULE, TAINT_UNSIGNED_MODULE, TAINT_LIVEPATCH = 3, 12, 13, 15
TAINT_LETTERS = {TAINT_OOT_MODULE: "O", TAINT_UNSIGNED_MODULE: "E", TAINT_LIVEPATCH: "K"}


class ModuleContext:
    """What module code sees: THIS_MODULE, its parameters, and kernel APIs."""

    def __init__(self, kernel: "Kernel", mod: "Module") -> None:
        self.kernel = kernel
        self.module = mod
        self.data: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.module.name

    def param(self, name: str) -> Any:
        return self.module.params[name].value

    def set_param(self, name: str, value: Any) -> None:
        self.module.params[name].value = value

    def printk(self, level: int, msg: str) -> None:
        self.kernel.printk_task(level, msg)

    def pr_info(self, msg: str) -> None:
        """pr_info() with the modules' usual ``KBUILD_MODNAME ": "`` pr_fmt."""
        self.printk(KERN_INFO, f"{self.name}: {msg}")

    def klp_enable_patch(self, patch: Patch) -> int:
        ret = self.kernel.livepatch.enable_patch(self.module, patch)
        # the replacement functions are this module's text: their declared
        # size and call sites, as stack traces show them
        for fdecl in (f for o in getattr(patch, "objs", None) or [] for f in o.funcs if isinstance(f, Func)):
            for func in self.kernel.symbols.find(self.module.name, fdecl.new_name):
                func.size, func.calls = fdecl.size, dict(fdecl.calls)
        return ret

    def klp_get_state(self, state_id: int):
        patch = next((p for p in self.kernel.livepatch.sysfs_patches if p.mod is self.module), None)
        return patch.get_state(state_id) if patch else None

    def klp_get_prev_state(self, state_id: int):
        return self.kernel.livepatch.get_prev_state(state_id)

    def schedule_delayed_work(self, delay_ns: int, func_name: str) -> None:
        """Run this module's function ``func_name`` on a kworker after ``delay_ns``
        (a delayed work item the module owns; cancel_works() drops them)."""
        works = self.data.setdefault("_works", {})

        def run() -> None:
            works.pop(func_name, None)
            sched = self.kernel.sched
            sched.run_work(self.data.setdefault("_worker", None) or self._worker(), self.name, func_name)

        works[func_name] = self.kernel.wq.schedule(delay_ns, f"{self.name}:{func_name}", run)

    def _worker(self):
        self.data["_worker"] = self.kernel.sched.spawn_kworker()
        return self.data["_worker"]

    def cancel_works(self) -> None:
        """cancel_delayed_work_sync() for every pending work of the module."""
        for work in self.data.pop("_works", {}).values():
            work.cancel()
        worker = self.data.get("_worker")
        if worker is not None and self.kernel.sched.is_blocked(worker):
            self.kernel.sched.finish_blocked_call(worker)

    def kthread_run(self, fn: "str | KFunc", name: str, *args: Any):
        """kthread_run(fn, data, name): a kthread running this module's function
        ``fn`` (its body gets ``call`` and ``args``); returns the task.  Inside,
        ``call.msleep(ms)``, ``call.schedule_timeout(ms)`` and
        ``call.kthread_should_stop()``; from anywhere, :meth:`kthread_stop`
        and :meth:`wake_up_process`."""
        func = fn if isinstance(fn, KFunc) else self.function(fn)
        return self.kernel.sched.kthreads.run(func, name, *args)

    def kthread_stop(self, task) -> int:
        """kthread_stop(): should-stop, wake, wait for the function's return value."""
        return self.kernel.sched.kthreads.stop(task)

    def wake_up_process(self, task) -> bool:
        return self.kernel.sched.kthreads.wake_up_process(task)

    def static_key(self, name: str):
        """A key by name (the module's own, vmlinux's, or another module's)."""
        key = self.kernel.jump_labels.key(name)
        if key is None:
            raise LookupError(f"no static key {name}")
        return key

    def function(self, name: str) -> KFunc:
        return next(f for f in self.kernel.symbols.functions(self.name) if f.name == name)


@attrs.define(eq=False, repr=False)
class Module:
    defn: ModuleDef
    state: ModuleState = ModuleState.UNFORMED
    refcnt: int = 0
    params: dict[str, ParamValue] = attrs.field(factory=dict)
    taints: set[int] = attrs.field(factory=set)
    klp_alive: bool = False
    ctx: ModuleContext = attrs.field(default=None)
    base: int = 0  # where its text would be (synthetic, like /proc/kallsyms)
    # its init function's ftrace records were saved when init memory was freed
    # (some ftrace ops registered then): kallsyms lists it as 'T'
    init_kept: bool = False

    def __repr__(self) -> str:
        return f"<Module {self.name}>"

    @property
    def name(self) -> str:
        return self.defn.name

    @property
    def taint_letters(self) -> str:
        return "".join(TAINT_LETTERS[b] for b in sorted(self.taints))

    @property
    def coresize(self) -> int:
        """show_coresize(): text and core data (x86_64 keeps data out of vmalloc)."""
        return module_size(self.defn)

    @property
    def initsize(self) -> int:
        """show_initsize(): 0 once do_init_module() freed the init memory."""
        return 0 if self.state in (ModuleState.LIVE, ModuleState.GOING) else module_init_size(self.defn)

    def sections(self) -> dict[str, int]:
        """module_sect_attrs: each allocated section and its address."""
        names = module_sections(self.defn)
        text = names.index(".text")  # at the module's base, as /proc/modules shows it
        return {name: self.base + (i - text) * PAGE_SIZE // 4 for i, name in enumerate(names)}

    def notes(self, release: str) -> dict[str, bytes]:
        return module_notes(self.defn, release)

    def proc_modules_line(self, show_address: bool) -> str:
        """This module's line of /proc/modules (kernel/module/procfs.c m_show)."""
        users = "[permanent]," if self.defn.init is not None and self.defn.exit is None else "-"
        state = {ModuleState.GOING: "Unloading", ModuleState.COMING: "Loading"}.get(self.state, "Live")
        flags = self.taint_letters + {ModuleState.GOING: "-", ModuleState.COMING: "+"}.get(self.state, "")
        line = f"{self.name} {module_size(self.defn)} {self.refcnt} {users} {state} 0x{self.base if show_address else 0:016x}"
        return line + (f" ({flags})" if self.taints else "")


@attrs.define(eq=False)
class ModuleLoader:
    MODULES_VADDR = 0xFFFFFFFFC0000000  # x86_64 module space (as KASLR leaves it on Debian)

    k: "Kernel"
    modules: dict[str, Module] = attrs.field(factory=dict)  # insertion order = load order
    tainted: int = 0
    last_error: str | None = None  # why the last definition was refused (not a kernel message)
    _taint_once: set[int] = attrs.field(factory=set)
    _loads: int = 0

    def get(self, name: str) -> Module | None:
        return self.modules.get(name)

    # lib/kobject_uevent.c kobject_actions[]
    UEVENT_ACTIONS = ("add", "remove", "change", "move", "online", "offline", "bind", "unbind")

    def synth_uevent(self, mod: Module, data: bytes) -> int:
        """store_uevent() -> kobject_synth_uevent(): an action (and, after a
        blank, a UUID and KEY=VALUE arguments); a bad one is EINVAL and a
        pr_warn naming the kobject's path.  The uevent itself goes nowhere."""
        text = data[:-1] if data[-1:] in (b"\n", b"\0") else data
        first, _, args = text.partition(b" ")
        msg = None
        if not text or first.decode("latin-1") not in self.UEVENT_ACTIONS:
            msg = "unknown uevent action string"
        elif _ and not _uevent_args_ok(args):
            msg = "incorrect uevent action arguments"
        if msg is not None:
            self.k.printk_task(KERN_WARNING, f"synth uevent: /module/{mod.name}: {msg}")
            return -errno.EINVAL
        return len(data)

    def try_module_get(self, mod: Module) -> bool:
        if mod.state is ModuleState.GOING or mod.name not in self.modules:
            return False
        mod.refcnt += 1
        return True

    def module_put(self, mod: Module) -> None:
        if mod.refcnt > 0:
            mod.refcnt -= 1

    def _taint(self, mod: Module, bit: int, message: str | None, level: int) -> None:
        mod.taints.add(bit)
        if message and bit not in self._taint_once:
            self.k.printk_task(level, f"{mod.name}: {message}")
        self._taint_once.add(bit)
        self.tainted |= 1 << bit

    def load(self, defn: ModuleDef, args: str = "") -> int:
        """init_module(): 0, or a negative errno with nothing left behind."""
        problem = validate(defn)
        if problem is not None:
            self.last_error = problem
            return -errno.EINVAL
        name = defn.name
        if name in self.modules:
            return -errno.EEXIST
        self._loads += 1
        mod = Module(defn, base=self.MODULES_VADDR + 0x10000 * self._loads)
        mod.ctx = ModuleContext(self.k, mod)
        for decl in defn.params:
            mod.params[decl.name] = ParamValue(decl, list(decl.default) if isinstance(decl.default, list) else decl.default)
        self.modules[name] = mod
        if defn.out_of_tree:
            self._taint(mod, TAINT_OOT_MODULE, "loading out-of-tree module taints kernel.", KERN_WARNING)
        if defn.livepatch:
            self._taint(mod, TAINT_LIVEPATCH, "tainting kernel with TAINT_LIVEPATCH", KERN_NOTICE)
        if not defn.signed:
            self._taint(mod, TAINT_UNSIGNED_MODULE,
                        "module verification failed: signature and/or required key missing - tainting kernel",
                        KERN_NOTICE)
        ret = self._simplify_symbols(mod)
        if ret:
            del self.modules[name]
            return ret
        uses = []
        for fdecl in defn.functions:
            func = self.k.symbols.add(KFunc(fdecl.name, name, body=fdecl.body, notrace=fdecl.notrace,
                                            size=fdecl.size, calls=dict(fdecl.calls)))
            uses += [(func, key) for key in fdecl.static_branches]
        if defn.livepatch and not self._jump_labels_resolvable(defn):
            self.modules.pop(name, None)
            self.k.symbols.remove_object(name)
            return -errno.ENOEXEC
        # complete_formation(), prepare_coming_module(): livepatch and the
        # module notifiers see the module before parse_args() runs
        mod.state = ModuleState.COMING
        ret = self.k.livepatch.module_coming(mod)
        if ret:
            return self._unwind(mod, ret)
        ret = self.k.jump_labels.module_coming(name, uses, [(d.name, d.default) for d in defn.static_keys])
        if ret:
            return self._unwind(mod, ret)
        ret = self._parse_args(mod, args)
        if ret:  # coming_cleanup: the going notifiers, klp_module_going()
            return self._unwind(mod, ret)
        ret = self._run_init(mod)
        if ret < 0:
            return self._unwind(mod, ret)
        if ret > 0:
            # one pr_warn(), one record: the second line is a continuation of it
            self.k.printk_task(KERN_WARNING, f"do_init_module: '{name}'->init suspiciously returned {ret}, "
                                             "it should follow 0/-E convention\n"
                                             "do_init_module: loading module anyway...")
            print_dump_stack(self.k, init_module_path(self.k), FINIT_MODULE_USER_REGS)
        # do_init_module() frees the init memory: ftrace_free_mem() keeps the
        # init functions' records in a mod_map when any ftrace ops is registered
        mod.init_kept = bool(self.k.ftrace.ops)
        mod.state = ModuleState.LIVE
        return 0

    def _simplify_symbols(self, mod: Module) -> int:
        """simplify_symbols(): every undefined symbol is looked up in vmlinux
        and the loaded modules; each one missing is logged, the load fails
        with -ENOENT, before the module is formed."""
        ret = 0
        for sym in mod.defn.imports:
            if not any(self.k.symbols.find(obj, sym) for obj in [VMLINUX, *self.modules] if obj != mod.name):
                ret = -errno.ENOENT
                self.k.printk_task(KERN_WARNING, f"{mod.name}: Unknown symbol {sym} (err {ret})")
        return ret

    def _parse_args(self, mod: Module, args: str) -> int:
        """parse_args(): every word is parsed, each error logged as parse_one()'s
        caller quotes it; the last error is the load's.  Unknown names are
        unknown_module_param_cb()'s warning, not an error."""
        err = 0
        for pname, value in split_args(args):
            pv = mod.params.get(pname)
            if pv is None:
                self.k.printk_task(KERN_WARNING, f"{mod.name}: unknown parameter '{pname}' ignored")
                continue
            if value is None and pv.decl.type != "bool":
                ret = -errno.EINVAL  # parse_one(): a bare "name" only for NOARG types
            else:
                ret = pv.parse("1" if value is None else value)  # param_set_bool(): NULL is "1"
            if ret:
                self.k.printk_task(KERN_ERR, f"{mod.name}: `{value or ''}' invalid for parameter `{pname}'")
                err = ret
        return err

    def _jump_labels_resolvable(self, defn: ModuleDef) -> bool:
        """A livepatch module's jump labels must use vmlinux keys or its own:
        module-specific klp relocations are applied only after the jump label
        code has read the module's __jump_table (kernel >= 5.8), so a key in
        another module is never resolved; kpatch-build refuses such patches."""
        own = {k.name for k in defn.static_keys}
        patch = defn.patch if isinstance(defn.patch, Patch) else None
        used = [k for f in defn.functions for k in f.static_branches]
        if patch is not None:
            used += [k for o in patch.objs for f in o.funcs for k in f.static_branches]
        for name in used:
            key = self.k.jump_labels.key(name)
            if name not in own and (key is None or key.owner != "vmlinux"):
                return False
        return True

    def _run_init(self, mod: Module) -> int:
        defn = mod.defn
        init = defn.init
        if init is None and defn.patch is not None:
            def init(ctx: ModuleContext, defn: ModuleDef = defn) -> int:
                patch = defn.patch(ctx) if callable(defn.patch) else defn.patch
                problem = validate_patch(defn.name, patch)
                if problem is not None:
                    self.last_error = problem
                    return -errno.EINVAL
                return ctx.klp_enable_patch(patch)
        if init is None:
            return 0
        with self.k.in_function(mod.name, "init_module"):
            try:
                return int(init(mod.ctx) or 0)
            except Exception as exc:  # a bug in the module's Python: the load fails
                return self.k.module_bug(mod.name, "init", exc, -errno.ENOEXEC)

    def _unwind(self, mod: Module, ret: int) -> int:
        mod.state = ModuleState.GOING
        self.k.jump_labels.module_going(mod.name)
        self.k.livepatch.module_going(mod)
        self._free(mod)
        return ret

    def _free(self, mod: Module) -> None:
        self.k.symbols.remove_object(mod.name)
        self.modules.pop(mod.name, None)
        self.k.module_freed(mod)

    def delete(self, name: str, force: bool = False) -> int:
        """delete_module(name, O_NONBLOCK | (O_TRUNC if force)), as
        kernel/module/main.c has it: an unformed module is not found, one
        that is not LIVE (COMING, GOING) is EBUSY, one with an init but no
        exit cannot be removed (EBUSY) unless forced, one in use is
        EWOULDBLOCK unless forced.  Forcing is CONFIG_MODULE_FORCE_UNLOAD
        (=y on Debian and Fedora x86_64) and taints the kernel 'R'."""
        mod = self.modules.get(name)
        if mod is None or mod.state is ModuleState.UNFORMED:
            return -errno.ENOENT
        if mod.state is not ModuleState.LIVE:
            return -errno.EBUSY
        forced = False
        if mod.defn.init is not None and mod.defn.exit is None:
            forced = self._try_force_unload(force)
            if not forced:
                return -errno.EBUSY
        if mod.refcnt > 0 and not (forced or self._try_force_unload(force)):
            return -errno.EWOULDBLOCK
        mod.state = ModuleState.GOING
        if mod.defn.exit is not None:
            with self.k.in_function(mod.name, "cleanup_module"):
                try:
                    mod.defn.exit(mod.ctx)
                except Exception as exc:
                    self.k.module_bug(mod.name, "exit", exc, 0)
        self.k.jump_labels.module_going(mod.name)
        self.k.livepatch.module_going(mod)
        self._free(mod)
        return 0

    def _try_force_unload(self, force: bool) -> bool:
        if force:
            self.tainted |= 1 << TAINT_FORCED_RMMOD
        return force

    def param_store(self, mod: Module, pname: str, data: bytes) -> int:
        pv = mod.params[pname]
        return pv.parse(data.decode("utf-8", "replace"))


_UUID = __import__("re").compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _uevent_args_ok(args: bytes) -> bool:
    """kobject_action_args(): a UUID (uuid_is_valid()), then KEY=VALUE
    pairs with alphanumeric keys."""
    words = args.split(b" ")
    if not _UUID.fullmatch(words[0]):
        return False
    for word in words[1:]:
        key, eq, _ = word.partition(b"=")
        if not eq or not key or not key.isalnum():
            return False
    return True
