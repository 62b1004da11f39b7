"""System states, shadow variables and kprobes in virtual time."""

from __future__ import annotations

import errno
import re

from livefs.kernel.kprobes import Kprobe
from livefs.kernel.livepatch.shadow import ShadowData

S1, S2, S3 = "test_klp_state", "test_klp_state2", "test_klp_state3"

# test-shadow-vars.sh's expected output (spec/selftests.md §4, the upstream
# script's check_result text), module prefix removed
SHADOW_VARS_TRANSCRIPT = [
    'klp_shadow_get(obj=PTR1, id=0x1234) = PTR0',
    '  got expected NULL result',
    'shadow_ctor: PTR3 -> PTR2',
    'klp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR2 = PTR3',
    'shadow_ctor: PTR6 -> PTR5',
    'klp_shadow_alloc(obj=PTR1, id=0x1235, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR5 = PTR6',
    'shadow_ctor: PTR8 -> PTR7',
    'klp_shadow_alloc(obj=PTR9, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR7 = PTR8',
    'shadow_ctor: PTR11 -> PTR10',
    'klp_shadow_alloc(obj=PTR9, id=0x1235, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR10 = PTR11',
    'shadow_ctor: PTR13 -> PTR12',
    'klp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR12 = PTR13',
    'shadow_ctor: PTR16 -> PTR15',
    'klp_shadow_alloc(obj=PTR14, id=0x1235, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR15 = PTR16',
    'klp_shadow_get(obj=PTR1, id=0x1234) = PTR3',
    '  got expected PTR3 -> PTR2 result',
    'klp_shadow_get(obj=PTR1, id=0x1235) = PTR6',
    '  got expected PTR6 -> PTR5 result',
    'klp_shadow_get(obj=PTR9, id=0x1234) = PTR8',
    '  got expected PTR8 -> PTR7 result',
    'klp_shadow_get(obj=PTR9, id=0x1235) = PTR11',
    '  got expected PTR11 -> PTR10 result',
    'klp_shadow_get(obj=PTR14, id=0x1234) = PTR13',
    '  got expected PTR13 -> PTR12 result',
    'klp_shadow_get(obj=PTR14, id=0x1235) = PTR16',
    '  got expected PTR16 -> PTR15 result',
    'klp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR2 = PTR3',
    '  got expected PTR3 -> PTR2 result',
    'klp_shadow_get_or_alloc(obj=PTR9, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR7 = PTR8',
    '  got expected PTR8 -> PTR7 result',
    'klp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR12 = PTR13',
    '  got expected PTR13 -> PTR12 result',
    'shadow_dtor(obj=PTR1, shadow_data=PTR3)',
    'klp_shadow_free(obj=PTR1, id=0x1234, dtor=PTR17)',
    'klp_shadow_get(obj=PTR1, id=0x1234) = PTR0',
    '  got expected NULL result',
    'shadow_dtor(obj=PTR9, shadow_data=PTR8)',
    'klp_shadow_free(obj=PTR9, id=0x1234, dtor=PTR17)',
    'klp_shadow_get(obj=PTR9, id=0x1234) = PTR0',
    '  got expected NULL result',
    'shadow_dtor(obj=PTR14, shadow_data=PTR13)',
    'klp_shadow_free(obj=PTR14, id=0x1234, dtor=PTR17)',
    'klp_shadow_get(obj=PTR14, id=0x1234) = PTR0',
    '  got expected NULL result',
    'klp_shadow_get(obj=PTR1, id=0x1235) = PTR6',
    '  got expected PTR6 -> PTR5 result',
    'klp_shadow_get(obj=PTR9, id=0x1235) = PTR11',
    '  got expected PTR11 -> PTR10 result',
    'klp_shadow_get(obj=PTR14, id=0x1235) = PTR16',
    '  got expected PTR16 -> PTR15 result',
    'klp_shadow_free_all(id=0x1235, dtor=PTR0)',
    'klp_shadow_get(obj=PTR1, id=0x1235) = PTR0',
    '  got expected NULL result',
    'klp_shadow_get(obj=PTR9, id=0x1235) = PTR0',
    '  got expected NULL result',
    'klp_shadow_get(obj=PTR14, id=0x1235) = PTR0',
    '  got expected NULL result',
]


def lines_of(machine, mod):
    return [line.split(": ", 1)[1] for line in machine.log() if line.startswith(f"{mod}: ")]


def test_state_allocated_fixed_restored_freed(machine):
    k = machine.k
    machine.insmod(S1)
    assert lines_of(machine, S1) == ["pre_patch_callback: vmlinux",
                                     "allocate_loglevel_state: allocating space to store console_loglevel",
                                     "post_patch_callback: vmlinux",
                                     "fix_console_loglevel: fixing console_loglevel"]
    assert k.console_loglevel == 15
    machine.set_mark()
    machine.write(S1, "enabled", b"0")
    assert k.console_loglevel == 7
    assert lines_of(machine, S1)[-1] == "free_loglevel_state: freeing space for the stored console_loglevel"


def test_state_taken_over_by_cumulative_patch(machine):
    k = machine.k
    machine.insmod(S1)
    machine.set_mark()
    machine.insmod(S2)
    assert lines_of(machine, S2) == ["pre_patch_callback: vmlinux",
                                     "allocate_loglevel_state: space to store console_loglevel already allocated",
                                     "post_patch_callback: vmlinux",
                                     "fix_console_loglevel: taking over the console_loglevel change"]
    assert machine.patches() == [S2] and machine.rmmod(S1) == 0
    machine.write(S2, "enabled", b"0")
    assert k.console_loglevel == 7  # the saved value came along


def test_incompatible_state_version_refused(machine):
    machine.insmod(S2)
    machine.set_mark()
    assert machine.insmod(S1) == -errno.EINVAL
    assert machine.log() == [f"livepatch: Livepatch patch ({S1}) is not compatible with the already installed "
                             "livepatches."]
    assert machine.patches() == [S2] and machine.k.modules.get(S1) is None


def test_states_are_per_load(machine):
    machine.insmod(S2)
    machine.insmod(S3)
    machine.rmmod(S2)
    machine.set_mark()
    assert machine.insmod(S2) == 0
    assert "fix_console_loglevel: taking over the console_loglevel change" in lines_of(machine, S2)


def test_shadow_vars_module_transcript(machine):
    assert machine.insmod("test_klp_shadow_vars") == 0
    assert lines_of(machine, "test_klp_shadow_vars") == SHADOW_VARS_TRANSCRIPT
    assert not machine.k.shadow.vars


def test_shadow_api_semantics(machine):
    k = machine.k
    obj, calls = object(), []

    def ctor(o, data: ShadowData, arg):
        calls.append(arg)
        data.value = arg
        return 0

    a = k.shadow.alloc(obj, 1, 8, ctor, "x")
    assert a is not None and a.value == "x"
    machine.set_mark()
    assert k.shadow.alloc(obj, 1, 8, ctor, "y") is None  # duplicate: WARN, NULL
    assert re.fullmatch(r"Duplicate shadow variable <0{8}[0-9a-f]{8}, 1>", machine.log()[1])
    assert machine.log()[2].startswith("WARNING: CPU: 0 PID: ") and machine.log()[-1].startswith("---[ end trace")
    assert k.shadow.get_or_alloc(obj, 1, 8, ctor, "z") is a and calls == ["x"]
    assert k.shadow.alloc(obj, 2, 8, lambda o, d, arg: -12) is None
    assert "(-12)" in machine.log()[-1] and k.shadow.get(obj, 2) is None
    freed = []
    k.shadow.free(obj, 1, lambda o, d: freed.append(d))
    assert freed == [a] and k.shadow.get(obj, 1) is None
    k.shadow.free(obj, 1)  # missing: silent


def test_kprobe_with_post_handler_excludes_livepatch(machine):
    assert machine.insmod("test_klp_kprobe", "has_post_handler=true") == 0
    assert machine.insmod("test_klp_livepatch") == -errno.EBUSY
    assert "livepatch: failed to register ftrace handler for function 'cmdline_proc_show' (-16)" in machine.log()
    assert machine.rmmod("test_klp_kprobe") == 0
    assert machine.insmod("test_klp_livepatch") == 0


def test_kprobe_without_post_handler_coexists_and_livepatch_blocks_ipmodify_probe(machine):
    k = machine.k
    assert machine.insmod("test_klp_kprobe", "has_post_handler=false") == 0
    assert machine.insmod("test_klp_livepatch") == 0
    assert machine.cat().startswith("test_klp_livepatch")
    probe = k.kprobes.probes[0]
    assert probe.hits == 1
    assert k.kprobes.register(Kprobe("cmdline_proc_show", post_handler=True)) == -errno.EBUSY


def test_kprobes_global_switch_disarms(machine):
    k = machine.k
    machine.insmod("test_klp_kprobe")  # post handler by default
    assert k.kprobes.set_enabled(False) == 0
    assert machine.insmod("test_klp_livepatch") == 0  # nothing armed: no conflict
    assert "kprobes: Kprobes globally disabled" in machine.log()
    machine.write("test_klp_livepatch", "enabled", b"0")
    assert k.kprobes.set_enabled(True) == 0 and k.kprobes.probes[0].armed


def test_getpid_patch_counts_listed_pids(machine):
    k = machine.k
    helpers = [machine.task("test_klp-call_g") for _ in range(3)]
    pids = ",".join(str(t.pid) for t in helpers)
    assert machine.insmod("test_klp_syscall", f"klp_pids={pids}") == 0
    ctx = k.modules.get("test_klp_syscall").ctx
    assert ctx.data["npids_pending"] == 3
    for t in helpers:
        with k.syscall(t):
            assert k.call(t, "vmlinux", "__x64_sys_getpid") == t.tgid
    assert ctx.data["npids_pending"] == 0
    assert "test_klp_syscall" in k.kernel_dirs
    machine.write("test_klp_syscall", "enabled", b"0")
    machine.rmmod("test_klp_syscall")
    assert "test_klp_syscall" not in k.kernel_dirs


def test_shadow_samples_fix_the_leak(machine):
    k = machine.k
    assert machine.insmod("livepatch_shadow_mod") == 0
    k.advance(4 * 10**9)
    assert any(line.startswith("dummy_alloc: dummy @ ") for line in machine.log())
    assert machine.insmod("livepatch_shadow_fix1") == 0
    assert machine.insmod("livepatch_shadow_fix2") == 0
    machine.set_mark()
    k.advance(20 * 10**9)
    log = machine.log()
    assert any("livepatch_fix1_dummy_alloc: dummy @ " in line for line in log)
    assert any("livepatch_fix2_dummy_leak_dtor: dummy @ " in line and "prevented leak @ " in line for line in log)
    assert any("livepatch_fix2_dummy_free: dummy @ " in line and " leaked!" in line for line in log)
    assert any("check counter = " in line for line in log)
    for name in ("livepatch_shadow_fix2", "livepatch_shadow_fix1"):
        assert machine.write(name, "enabled", b"0") == 0
        assert machine.rmmod(name) == 0
    assert machine.rmmod("livepatch_shadow_mod") == 0
    assert k.wq.next_deadline() is None  # its works were cancelled


def test_callbacks_samples(machine):
    k = machine.k
    assert machine.insmod("livepatch_callbacks_busymod", "sleep_secs=2") == 0
    assert machine.insmod("livepatch_callbacks_demo") == 0
    assert k.livepatch.transition_patch is not None  # the worker sleeps in busymod_work_func
    k.advance(4 * 10**9)
    assert k.livepatch.transition_patch is None
    assert "livepatch_callbacks_busymod: busymod_work_func exit" in machine.log()
    assert machine.insmod("livepatch_callbacks_mod") == 0
    assert "livepatch_callbacks_demo: post_patch_callback: livepatch_callbacks_mod -> " \
           "[MODULE_STATE_COMING] Full formed, running module_init" in machine.log()
