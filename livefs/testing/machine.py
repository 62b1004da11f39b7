"""A hypothesis state machine over the livepatch model, in virtual time.

Rules do what users and the kernel do -- load and unload patches and target
modules, enable, disable, force and reverse, stage tasks, let time pass, send
signals, toggle ftrace, kprobes and static keys, call patched code -- and the
invariants are the kernel's promises.  Subclass :class:`LivepatchMachine` to
add rules or invariants of your own; ``TestLivepatch = LivepatchMachine.TestCase``
makes a pytest test of it.
"""

from __future__ import annotations

import stat

import errno

from hypothesis import event, note, strategies as st, target
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from livefs.catalog import find
from livefs.fs.root import build_root
from livefs.fs.tree import Attr, Dir, Request, resolve
from livefs.kernel.clock import NSEC_PER_MSEC, NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.ftrace import OpsFlag
from livefs.kernel.kprobes import Kprobe
from livefs.kernel.livepatch.transition import SIGNALS_TIMEOUT
from livefs.kernel.tasks import KLP_PATCHED, KLP_UNDEFINED, KLP_UNPATCHED, TaskKind

from .shadow import Shadow, ShadowPatch, declared
from .strategies import (MODULE_TARGETS, VMLINUX_TARGETS, PatchSpec, TaskSpec, patch_specs, tag_body,
                         target_module, task_specs)

CATALOG_PATCHES = ("test_klp_livepatch", "test_klp_atomic_replace", "livepatch_sample", "test_klp_callbacks_demo",
                   "test_klp_state", "test_klp_state2")
LOAD_ERRORS = {0, -errno.EEXIST, -errno.EBUSY, -errno.EINVAL, -errno.ENODEV}
# an index drawn for "one of these" (taken modulo the count): unlike st.data(),
# it prints as a literal, so a failing run's reproducer runs as it stands
PICK = st.integers(min_value=0, max_value=1 << 16)


def _pick(items, index: int):
    return items[index % len(items)]


class InvariantViolation(AssertionError):
    pass


class LivepatchMachine(RuleBasedStateMachine):
    ncpus = 2

    def __init__(self) -> None:
        super().__init__()
        k = self.k = Kernel(ncpus=self.ncpus)
        k.dyndbg.exec_queries("file kernel/livepatch/* +p\nfunc klp_try_switch_task -p")
        for name in VMLINUX_TARGETS:
            k.add_vmlinux_function(name, tag_body("vmlinux", name, "orig"))
        self.key = k.jump_labels.define("lf_key")
        k.jump_labels.add_site(k.vmlinux_func("lf_vm_alpha"), self.key)
        self.shell = k.task_for(900_001, "bash")
        self.loader = k.task_for(900_002, "insmod", ppid=self.shell.pid)
        self.pinned: set[str] = set()
        self.violations: list[str] = []
        self.root = build_root()
        self.kprobes: list[Kprobe] = []
        k.livepatch.observers.append(self._on_transition_event)
        self.max_attempt = 0
        self.reached: set[str] = set()
        # the machine's own idea of the patches, from declarations and the log alone
        self.shadow = Shadow(on_complete=self._check_completion)
        self.left_by_force: set = set()  # tasks a forced transition left in code it took away
        k.printk.listeners.append(lambda rec: self.shadow.log_line(rec.text))
        cls = type(self)
        try:  # printed before "state = ...()" in a failing run's reproducer
            note(f"from {cls.__module__} import {cls.__qualname__}\n"
                 "from livefs.testing.strategies import PatchSpec, TaskSpec")
        except InvalidArgument:
            pass  # made outside a hypothesis test: nothing to print

    # -- helpers -------------------------------------------------------------------
    def _load(self, defn, args: str = "") -> int:
        if defn.livepatch:
            known: ShadowPatch | None = self.shadow.declared.get(defn.name)
            if known is None or not (known.active or known in self.shadow.patches):
                self.shadow.declared[defn.name] = declared(defn, args)
        with self.k.syscall(self.loader):
            ret = self.k.load_module(defn, args)
        assert ret in LOAD_ERRORS, f"insmod {defn.name} {args}: unexpected {ret}"
        if ret == 0 and not defn.livepatch:
            self.shadow.loaded.add(defn.name)
        return ret

    def _write(self, patch, attr: str, data: bytes) -> int:
        with self.k.syscall(self.shell):
            store = self.k.livepatch.enabled_store if attr == "enabled" else self.k.livepatch.force_store
            return store(patch, data)

    def _staged(self):
        return [t for t in self.k.tasks.tasks.values() if t.staged]

    def _on_transition_event(self, event: str, klp) -> None:
        """At completion every task is at the target."""
        for task in klp.k.tasks.all_with_idle():
            if task.patch_state != klp.target_state or task.patch_pending:
                self.violations.append(f"{task!r} at {task.patch_state} (pending {task.patch_pending}) when "
                                       f"'{klp.transition_patch.name}' completed to {klp.target_state}")

    def _check_completion(self, patch: ShadowPatch, enabling: bool, forced: bool) -> None:
        """When an unforced transition completes, no task's stack (what
        /proc/PID/stack shows) holds code it took away -- the code worked out
        by the shadow, not by the model.  A forced one may leave tasks there:
        that is what force is for, and they stay in that code for good (its
        module may even go), so later checks leave them out."""
        gone = self.shadow.taken_away(patch, enabling)
        for task in self.k.tasks.all_with_idle():
            if task in self.left_by_force:
                continue
            for frame in task.stack:
                if (frame.obj, frame.name) not in gone:
                    continue
                if forced:
                    self.left_by_force.add(task)
                else:
                    self.violations.append(f"{task!r} still in {frame.obj}:{frame.name} when '{patch.name}' "
                                           f"completed {'patching' if enabling else 'unpatching'}")

    # -- rules: modules and patches ------------------------------------------------------
    @rule(spec=patch_specs())
    def load_generated_patch(self, spec: PatchSpec) -> None:
        self._load(spec.module())

    @rule(name=st.sampled_from(CATALOG_PATCHES), replace=st.booleans())
    def load_catalog_patch(self, name: str, replace: bool) -> None:
        self._load(find(name), "replace=1" if replace and name == "test_klp_atomic_replace" else "")

    @rule(name=st.sampled_from(sorted(MODULE_TARGETS)))
    def load_target(self, name: str) -> None:
        self._load(target_module(name))

    @precondition(lambda self: self.k.modules.modules)
    @rule(pick=PICK)
    def unload_module(self, pick: int) -> None:
        name = _pick(sorted(self.k.modules.modules), pick)
        mod = self.k.modules.get(name)
        busy = mod.refcnt > 0
        with self.k.syscall(self.loader):
            ret = self.k.delete_module(name)
        assert ret == (-errno.EWOULDBLOCK if busy else 0)
        if ret == 0:
            self.shadow.loaded.discard(name)

    @precondition(lambda self: self.k.livepatch.sysfs_patches)
    @rule(pick=PICK, value=st.sampled_from([b"0", b"1", b"n", b"y", b"2", b""]))
    def write_enabled(self, pick: int, value: bytes) -> None:
        patch = _pick(self.k.livepatch.sysfs_patches, pick)
        before = (patch.enabled, self.k.livepatch.transition_patch)
        if not value:
            return  # echo -n "" > enabled writes nothing
        expected = self.shadow.enabled_errno(patch.name, value)
        logged = len(self.k.printk.records)
        ret = self._write(patch, "enabled", value)
        assert ret == -expected, f"echo {value!r} > {patch.name}/enabled: {ret}, the kernel's rules say {-expected}"
        if ret:
            assert (patch.enabled, self.k.livepatch.transition_patch) == before
            assert len(self.k.printk.records) == logged, "a refused write logged something"

    @precondition(lambda self: self.k.livepatch.transition_patch is not None)
    @rule()
    def force(self) -> None:
        lp = self.k.livepatch
        patch = lp.transition_patch
        if lp.target_state == KLP_UNPATCHED:
            self.pinned.add(patch.name)
        elif patch.replace:
            self.pinned |= {p.name for p in lp.patches if p is not patch}
        if lp.signals_cnt > SIGNALS_TIMEOUT:
            self.reached.add("force after signals")
        assert self._write(patch, "force", b"1") == 0

    # -- rules: tasks and time -------------------------------------------------------------
    @rule(spec=task_specs())
    def stage_task(self, spec: TaskSpec) -> None:
        k = self.k
        funcs = [f for fs in k.symbols.objects.values() for f in fs if spec.func and f.name == spec.func]
        func = funcs[0] if funcs else None
        kind = TaskKind.KTHREAD if spec.kind == "kthread" else TaskKind.USER
        task = k.sched.spawn(kind, f"lf-{spec.where}", func if spec.where == "sleep" else None)
        if spec.where == "spin" and func is not None:
            k.sched.spin(task, func)

    @precondition(lambda self: any(t.staged for t in self.k.tasks.tasks.values()))
    @rule(pick=PICK, op=st.sampled_from(["wake", "user", "fork", "exit", "signal", "into_new_code"]),
          code=PICK)
    def task_op(self, pick: int, op: str, code: int) -> None:
        k = self.k
        task = _pick(sorted(self._staged(), key=lambda t: t.pid), pick)
        if op == "wake":
            k.sched.wake(task)
        elif op == "user":
            assert k.sched.return_to_user(task) == (0 if task.kind is TaskKind.USER else -errno.EINVAL)
        elif op == "fork":
            child = k.sched.fork(task)
            assert (child.patch_state, child.patch_pending) == (task.patch_state, task.patch_pending)
        elif op == "exit":
            k.sched.exit(task)
        elif op == "signal":
            (k.sched.wake_up_interruptible if task.is_kthread else k.sched.fake_signal)(task)
        else:
            # only code that can run: a replacement for an object that is loaded and patched
            new = [f for p in k.livepatch.patches for fn in p.funcs() if (f := fn.new_func) is not None
                   and not fn.nop and fn.obj.patched]
            if new:
                k.sched.sleep(task, _pick(new, code))

    @rule(ms=st.integers(min_value=0, max_value=4000))
    def advance(self, ms: int) -> None:
        self.k.advance(ms * NSEC_PER_MSEC)

    # -- rules: the hard paths (long stalls, signals, force and reversal after them, forks) ----------------
    @rule(seconds=st.integers(min_value=14, max_value=70))
    def long_stall(self, seconds: int) -> None:
        """A big jump of time: many retry periods at once, the signal rounds among them."""
        self.k.advance(seconds * NSEC_PER_SEC)

    @precondition(lambda self: self.k.livepatch.patches)
    @rule(pick=PICK, kind=st.sampled_from(["kthread", "user"]))
    def park_in_patched_code(self, pick: int, kind: str) -> None:
        """A task asleep (uninterruptibly) in old or new code of a patch: it
        holds any transition of that code until it is woken or forced."""
        code = [f for p in self.k.livepatch.patches for fn in p.funcs() if not fn.nop and fn.obj.patched
                for f in (fn.old_func, fn.new_func) if f is not None]
        if code:
            task = self.k.sched.spawn(TaskKind.KTHREAD if kind == "kthread" else TaskKind.USER, "lf-parked",
                                      _pick(code, pick), interruptible=False)
            self.reached.add("parked in patched code" + (" mid-transition" if self.k.livepatch.in_transition()
                                                          else ""))
            assert task.pid in self.k.tasks.tasks

    @precondition(lambda self: self.k.livepatch.transition_patch is not None and self._staged())
    @rule(pick=PICK, n=st.integers(min_value=2, max_value=12))
    def fork_storm(self, pick: int, n: int) -> None:
        """Children, and their children, in the middle of a transition: each
        takes exactly its parent's state."""
        parent = _pick(sorted(self._staged(), key=lambda t: t.pid), pick)
        for _ in range(n):
            child = self.k.sched.fork(parent)
            assert (child.patch_state, child.patch_pending) == (parent.patch_state, parent.patch_pending)
            parent = child
        self.reached.add("fork storm mid-transition")

    @precondition(lambda self: self.k.livepatch.transition_patch is not None and self.k.livepatch.attempt >= 3)
    @rule()
    def reverse_stalled(self) -> None:
        """echo the opposite to enabled of a transition that has been stuck for a while."""
        lp = self.k.livepatch
        patch = lp.transition_patch
        attempts = lp.attempt
        assert self._write(patch, "enabled", b"0" if patch.enabled else b"1") == 0
        assert lp.transition_patch is patch or lp.transition_patch is None
        self.reached.add("reversal after 15+ attempts" if attempts > 15 else "reversal after 3+ attempts")

    # -- rules: the other text users --------------------------------------------------------
    @rule(on=st.booleans())
    def ftrace_enabled(self, on: bool) -> None:
        permanent = any(OpsFlag.PERMANENT in o.flags for o in self.k.ftrace.ops)
        ret = self.k.ftrace.set_sysctl(int(on))
        assert ret == (-errno.EBUSY if not on and permanent and self.k.ftrace.enabled else 0)

    @rule(func=st.sampled_from(VMLINUX_TARGETS), post=st.booleans())
    def kprobe_register(self, func: str, post: bool) -> None:
        kp = Kprobe(func, post_handler=post)
        ret = self.k.kprobes.register(kp)
        assert ret in (0, -errno.EBUSY)
        if ret == 0:
            self.kprobes.append(kp)

    @precondition(lambda self: self.kprobes)
    @rule(pick=PICK)
    def kprobe_unregister(self, pick: int) -> None:
        kp = _pick(self.kprobes, pick)
        self.k.kprobes.unregister(kp)
        self.kprobes.remove(kp)

    @rule(op=st.sampled_from(["inc", "dec", "enable", "disable"]))
    def static_key(self, op: str) -> None:
        jl = self.k.jump_labels
        if op == "dec" and self.key.enabled == 0:
            return  # a negative count is a kernel bug, not a user action
        getattr(jl, op)(self.key)

    def _call_all(self, task) -> None:
        """One syscall of ``task`` calls every loaded target twice: each call
        runs a version the shadow allows, and no patch shows both its old and
        its new code within the syscall."""
        k = self.k
        with k.syscall(task):
            seen = {}
            for obj, funcs in k.symbols.objects.items():
                for f in funcs:
                    if f.name in VMLINUX_TARGETS or obj in MODULE_TARGETS:
                        first = k.call(task, obj, f.name)
                        assert k.call(task, obj, f.name) == first
                        seen[(obj, f.name)] = first.rsplit(":", 1)[1]
        self.shadow.check_syscall(seen)

    @rule()
    def call_patched_code(self) -> None:
        self._call_all(self.shell)

    def _pending_in_user_space(self):
        return sorted((t for t in self._staged() if t.kind is TaskKind.USER and not t.stack and t.patch_pending),
                      key=lambda t: t.pid)

    @precondition(lambda self: self.k.livepatch.transition_patch is not None and self._pending_in_user_space())
    @rule(pick=PICK)
    def call_from_a_task_not_yet_switched(self, pick: int) -> None:
        """A task that has not switched (a child of one that has not) enters the
        kernel: it runs the code from before the transition, all of it."""
        self._call_all(_pick(self._pending_in_user_space(), pick))

    @rule(func=st.sampled_from(VMLINUX_TARGETS), n=st.integers(min_value=2, max_value=3),
          first=st.integers(min_value=0, max_value=3))
    def stacked_patches(self, func: str, n: int, first: int) -> None:
        """Several patches on one function, one after the other (each given
        time to complete): the func_stack the hard cases need."""
        for i in range(first, first + n):
            self._load(PatchSpec(f"lf_st_{i % 4}", ((None, func),), False).module())
            self.k.advance(2 * NSEC_PER_SEC)
        self.reached.add("patches stacked on one function")

    def _free_name(self) -> str | None:
        return next((f"lf_st_{i}" for i in range(8) if f"lf_st_{i}" not in self.k.modules.modules), None)

    @precondition(lambda self: self.k.livepatch.transition_patch is None)
    @rule(func=st.sampled_from(VMLINUX_TARGETS), depth=st.integers(min_value=0, max_value=3))
    def patch_over_a_sleeper(self, func: str, depth: int) -> None:
        """Patches on a function until ``depth`` are there; a user task asleep
        in the code it runs now; one more patch on it; a child of the sleeper.
        The new patch must wait for the sleeper, and the child, not switched
        either, runs the code just below the new patch -- wherever that is in
        the stack."""
        target = ("vmlinux", func)
        while len(self.shadow.stack(target)) < depth and self.k.livepatch.transition_patch is None:
            name = self._free_name()
            if name is None or self._load(PatchSpec(name, ((None, func),), False).module()):
                return
            self.k.advance(2 * NSEC_PER_SEC)
        if self.k.livepatch.transition_patch is not None:
            return  # held by a task of an earlier step
        name = self._free_name()
        if name is None:
            return
        version = self.shadow.top(target)
        owner = self.shadow.declared.get(version)
        code = (self.k.symbols.find(owner.name, owner.targets[("vmlinux", func)]) if owner is not None
                else self.k.symbols.find("vmlinux", func))
        sleeper = self.k.sched.spawn(TaskKind.USER, "lf-under", code[0], interruptible=False)
        if self._load(PatchSpec(name, ((None, func),), False).module()) == 0:
            self._call_all(self.k.sched.fork(sleeper))
            self.reached.add(f"patch over a sleeper, {len(self.shadow.stack(('vmlinux', func)))} deep")

    def teardown(self) -> None:
        """Say which hard paths this run reached (``--hypothesis-show-statistics``
        prints how often), and steer the search toward long transitions."""
        for record in self.k.livepatch.log:
            self.max_attempt = max(self.max_attempt, record.attempts())
            if any(e[2] == "signal" for e in record.events):
                self.reached.add("signals sent")
            if any(e[2] == "reverse" for e in record.events):
                self.reached.add("reversal")
            if record.outcome == "forced":
                self.reached.add("forced completion")
        self.max_attempt = max(self.max_attempt, self.k.livepatch.attempt)
        try:
            for path in sorted(self.reached):
                event(path)
            target(float(self.max_attempt), label="highest transition attempt")
        except InvalidArgument:
            pass  # run outside a hypothesis test

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def no_violation_at_completion(self) -> None:
        assert not self.violations, self.violations[0]

    @invariant()
    def at_most_one_transition(self) -> None:
        lp = self.k.livepatch
        assert (lp.transition_patch is None) == (lp.target_state == KLP_UNDEFINED)
        if lp.transition_patch is not None:
            assert lp.transition_patch in lp.patches

    @invariant()
    def patch_state_follows_transition(self) -> None:
        lp = self.k.livepatch
        for task in self.k.tasks.all_with_idle():
            if lp.transition_patch is None:
                assert task.patch_state == KLP_UNDEFINED and not task.patch_pending, repr(task)
            else:
                assert task.patch_state in (KLP_UNPATCHED, KLP_PATCHED), repr(task)
                if task.patch_pending:
                    assert task.patch_state != lp.target_state, repr(task)

    @invariant()
    def func_stacks_newest_first(self) -> None:
        lp = self.k.livepatch
        for ops in lp.ops.values():
            assert ops.func_stack, "an empty ops stays registered"
            order = [lp.patches.index(f.obj.patch) for f in ops.func_stack]
            assert order == sorted(order, reverse=True) and len(set(order)) == len(order)
            assert all(f.patched for f in ops.func_stack)

    @invariant()
    def ftrace_ops_exactly_for_patched_functions(self) -> None:
        lp, ft = self.k.livepatch, self.k.ftrace
        patched = {f.old_func for p in lp.patches for o in p.objs if o.patched for f in o.funcs if f.patched}
        assert set(lp.ops) == patched
        for func, ops in lp.ops.items():
            assert ops.fops in ft.ops and ops.fops.filter == {func}
            assert self.k.text.call_site(func) == ("call" if ft.enabled else "nop")

    @invariant()
    def sysfs_tree_equals_model(self) -> None:
        """Names, modes and values of every patch's sysfs files, against the
        model's own state and the kernel's fixed modes (core.c's attributes)."""
        lp = self.k.livepatch
        req = Request(self.k, self.shell)
        top = resolve(self.root, req, "sys/kernel/livepatch")
        assert isinstance(top, Dir) and top.mode == stat.S_IFDIR | 0o755
        assert [n for n, _ in top.listing(req)] == [p.name for p in lp.sysfs_patches]
        for p in lp.sysfs_patches:
            pdir = top.lookup(req, p.name)
            assert isinstance(pdir, Dir) and pdir.mode == stat.S_IFDIR | 0o755
            force = pdir.lookup(req, "force")
            assert isinstance(force, Attr) and force.mode == stat.S_IFREG | 0o200
            for attr, value, perm in (("enabled", p.enabled, 0o644), ("transition", p is lp.transition_patch, 0o444),
                                      ("replace", p.replace, 0o444)):
                node = pdir.lookup(req, attr)
                assert isinstance(node, Attr) and node.mode == stat.S_IFREG | perm, (attr, node)
                assert node.show(req) == f"{int(value)}\n"
            for o in p.objs:
                odir = pdir.lookup(req, o.sysfs_name)
                assert isinstance(odir, Dir) and odir.mode == stat.S_IFDIR | 0o755
                node = odir.lookup(req, "patched")
                assert isinstance(node, Attr) and node.mode == stat.S_IFREG | 0o444
                assert node.show(req) == f"{int(o.patched)}\n"

    @invariant()
    def refcnt_rules(self) -> None:
        lp = self.k.livepatch
        holders = {p.mod.name for p in lp.sysfs_patches}
        for mod in self.k.modules.modules.values():
            if mod.defn.livepatch:
                expected = 1 if mod.name in holders or mod.name in self.pinned else 0
                assert mod.refcnt == expected, f"{mod.name}: refcnt {mod.refcnt}, expected {expected}"
            else:
                assert mod.refcnt == 0

    @invariant()
    def log_in_order(self) -> None:
        recs = list(self.k.printk.records)
        for a, b in zip(recs, recs[1:]):
            assert b.seq == a.seq + 1 and b.ts_ns >= a.ts_ns
