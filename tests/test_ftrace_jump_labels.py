"""The text model, ftrace call sites, static keys and jump labels, in virtual time."""

from __future__ import annotations

import errno

import pytest

from livefs.catalog.api import Func, Function, ModuleDef, Object, Patch, StaticKeyDef
from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.ftrace import FtraceOps, OpsFlag
from livefs.kernel.tasks import TaskKind
from livefs.kernel.text import TextLockError

LP = "test_klp_livepatch"


def test_call_site_follows_registered_ops(machine):
    k = machine.k
    f = k.vmlinux_func("cmdline_proc_show")
    assert k.text.call_site(f) == "nop"
    machine.insmod(LP)
    assert k.text.call_site(f) == "call"
    assert k.ftrace.set_sysctl(0) == -errno.EBUSY and k.text.call_site(f) == "call"
    machine.write(LP, "enabled", b"0")
    assert k.text.call_site(f) == "nop"


def test_text_is_poked_only_under_the_lock(machine):
    k = machine.k
    with pytest.raises(TextLockError):
        k.text.poke_call_site(k.vmlinux_func("cmdline_proc_show"), "call")
    with k.text.lock("test"):
        with pytest.raises(TextLockError):
            with k.text.lock("another engine"):
                pass


def test_ipmodify_conflict_on_filter_update(machine):
    k = machine.k
    f, g = k.vmlinux_func("cmdline_proc_show"), k.vmlinux_func("meminfo_proc_show")
    a = FtraceOps(lambda *a: None, OpsFlag.IPMODIFY)
    b = FtraceOps(lambda *a: None, OpsFlag.IPMODIFY)
    assert k.ftrace.set_filter_ip(a, f) == 0 and k.ftrace.register(a) == 0
    assert k.ftrace.set_filter_ip(b, g) == 0 and k.ftrace.register(b) == 0
    assert k.ftrace.set_filter_ip(b, f) == -errno.EBUSY
    plain = FtraceOps(lambda *a: None, OpsFlag(0))
    assert k.ftrace.set_filter_ip(plain, f) == 0 and k.ftrace.register(plain) == 0
    assert k.ftrace.set_filter_ip(k.ftrace.ops[0], k.vmlinux_func("printk")) == -errno.EINVAL  # notrace


def test_two_patches_share_one_ops_and_stack_newest_first(machine):
    k = machine.k
    machine.insmod("livepatch_sample")
    machine.insmod(LP)
    f = k.vmlinux_func("cmdline_proc_show")
    assert len(k.ftrace.hooked(f)) == 1
    ops = k.livepatch.ops[f]
    assert [fn.obj.patch.name for fn in ops.func_stack] == [LP, "livepatch_sample"]
    machine.write("livepatch_sample", "enabled", b"0")  # not on top: allowed
    assert machine.cat().startswith("test_klp_livepatch")


def test_static_key_counts_and_rules(machine):
    k = machine.k
    jl = k.jump_labels
    key = jl.define("my_key")
    site = jl.add_site(k.vmlinux_func("schedule"), key)
    assert not site.enabled
    assert jl.inc(key) and site.enabled
    assert jl.inc(key) and key.enabled == 2
    jl.dec(key)
    assert site.enabled
    jl.dec(key)
    assert not site.enabled
    machine.set_mark()
    jl.dec(key)  # below zero
    assert machine.log()[:2] == ["------------[ cut here ]------------", "jump label: negative count!"]
    assert key.enabled == 0 and k.modules.tainted & (1 << 9)  # TAINT_WARN
    jl.enable(key)
    jl.enable(key)
    assert key.enabled == 1 and site.enabled
    jl.inc(key)
    machine.set_mark()
    jl.disable(key)  # count 2: warns and leaves it
    assert key.enabled == 2 and "static_key_disable" in machine.log()[1]
    true_key = jl.define("on_by_default", default=True)
    assert jl.add_site(k.vmlinux_func("schedule"), true_key).enabled


def _target_with_key() -> ModuleDef:
    def body(call) -> str:
        return "fast\n" if call.static_branch("tgt_fast") else "slow\n"

    return ModuleDef(name="tgt", static_keys=[StaticKeyDef("tgt_fast")],
                     functions=[Function("tgt_show", body, static_branches=["tgt_fast"])])


def test_module_keys_and_sites_come_and_go(machine):
    k = machine.k
    defn = _target_with_key()
    with k.syscall(machine.task("insmod")):
        assert k.load_module(defn) == 0
    assert machine.cat("tgt_show", "tgt") == "slow\n"
    k.jump_labels.enable(k.jump_labels.key("tgt_fast"))
    assert machine.cat("tgt_show", "tgt") == "fast\n"
    user = ModuleDef(name="user_of_vmlinux_key",
                     functions=[Function("u", lambda call: call.static_branch("klp_sched_try_switch_key"),
                                         static_branches=["klp_sched_try_switch_key"])])
    with k.syscall(machine.task("insmod")):
        assert k.load_module(user) == 0
    key = k.jump_labels.key("klp_sched_try_switch_key")
    assert len(key.sites) == 2
    assert machine.rmmod("user_of_vmlinux_key") == 0 and len(key.sites) == 1
    assert machine.rmmod("tgt") == 0 and k.jump_labels.key("tgt_fast") is None


def test_livepatch_may_not_use_another_modules_key(machine):
    k = machine.k
    with k.syscall(machine.task("insmod")):
        assert k.load_module(_target_with_key()) == 0
    bad = ModuleDef(name="lp_bad", livepatch=True, patch=Patch(objs=[Object("tgt", [
        Func("tgt_show", lambda call: "x\n", static_branches=["tgt_fast"])])]))
    good = ModuleDef(name="lp_good", livepatch=True, patch=Patch(objs=[Object(None, [
        Func("cmdline_proc_show", lambda call: f"{call.static_branch('klp_sched_try_switch_key')}\n",
             static_branches=["klp_sched_try_switch_key"])])]))
    with k.syscall(machine.task("insmod")):
        assert k.load_module(bad) == -errno.ENOEXEC
        assert k.modules.get("lp_bad") is None
        assert k.load_module(good) == 0
    assert machine.cat() == "False\n"


def test_cond_resched_key_on_only_during_a_transition(smp_612):
    k = smp_612.k
    key = k.jump_labels.key("klp_sched_try_switch_key")
    spinner = k.sched.spawn(TaskKind.KTHREAD, "spinner", None)
    k.sched.spin(spinner, k.vmlinux_func("process_one_work"))
    smp_612.insmod(LP)
    assert key.enabled == 1 and all(s.enabled for s in key.sites)
    k.advance(2 * NSEC_PER_SEC)
    assert k.livepatch.transition_patch is None
    assert key.enabled == 0 and not any(s.enabled for s in key.sites)
    assert "klp_sched_try_switch_key" in k.jump_labels.render()


def test_function_tracer_sees_replacement_and_original(machine):
    k = machine.k
    machine.insmod(LP)
    assert k.tracer.set_filter(["livepatch_cmdline_proc_show", "cmdline_proc_show"], append=False) == 0
    assert k.tracer.set_tracer("function") == 0
    assert machine.cat().startswith("test_klp_livepatch")
    traced = [e.func for e in k.tracer.buffer]
    assert traced == ["cmdline_proc_show", "livepatch_cmdline_proc_show"]
    assert k.tracer.set_tracer("bogus") == -errno.EINVAL
    assert k.tracer.set_filter(["nope"], append=True) == -errno.EINVAL


def test_notrace_function_cannot_be_patched(machine):
    k = machine.k
    defn = ModuleDef(name="lp_notrace", livepatch=True,
                     patch=Patch(objs=[Object(None, [Func("printk", lambda call: None)])]))
    with k.syscall(machine.task("insmod")):
        assert k.load_module(defn) == -errno.EINVAL
    assert machine.log() == [
        "livepatch: enabling patch 'lp_notrace'",
        "livepatch: 'lp_notrace': initializing patching transition",
        "livepatch: failed to find location for function 'printk'",
        "livepatch: failed to patch object 'vmlinux'",
        "livepatch: failed to enable patch 'lp_notrace'",
        "livepatch: 'lp_notrace': canceling patching transition, going to unpatch",
        "livepatch: 'lp_notrace': completing unpatching transition",
        "livepatch: 'lp_notrace': unpatching complete"]
    assert k.tracer.set_filter(["printk"], append=False) == -errno.EINVAL  # not in available_filter_functions
