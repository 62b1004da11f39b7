"""The module loader and the log as kernel/module/main.c, kernel/livepatch/core.c,
kernel/printk/printk.c and kmod have them (issue 12): delete_module(2)'s refusals,
duplicate names in a patch, load_module()'s order, multi-line records and the
ring's size, MODULE_PARM_DESC-less parameters.  Virtual time only."""

from __future__ import annotations

import errno

import pytest

from livefs.kernel.kernel import Kernel
from livefs.kernel.moddef import Func, Function, ModuleDef, Object, Param, Patch
from livefs.kernel.modules import ModuleState
from livefs.kernel.printk import KERN_DEBUG
from livefs.kernel.version import KernelVersion


@pytest.fixture
def k() -> Kernel:
    return Kernel(ncpus=1)


def _tag(version: str):
    return lambda call: version


def _log_since(k: Kernel, first: int) -> list[tuple[int, str]]:
    return [(r.level, r.text) for r in k.printk.records if r.seq >= first and r.level != KERN_DEBUG
            and "taint" not in r.text]


def _load(k: Kernel, defn: ModuleDef, args: str = "") -> tuple[int, list[tuple[int, str]]]:
    """insmod from a task of its own: (return value, the new records as (level, text))."""
    first = k.printk.next_seq
    with k.syscall(k.task_for(k.tasks.new_pid(), "insmod")):
        ret = k.load_module(defn, args)
    return ret, _log_since(k, first)


# -- 1. delete_module(2) ---------------------------------------------------------------------------


def test_a_module_with_init_and_no_exit_is_not_removable(k):
    defn = ModuleDef(name="lf_noexit", description="init, no exit", init=lambda ctx: 0)
    assert k.load_module(defn) == 0
    assert k.delete_module("lf_noexit") == -errno.EBUSY
    assert k.modules.get("lf_noexit").state is ModuleState.LIVE
    assert "lf_noexit 12288 0 [permanent], Live" in k.modules.get("lf_noexit").proc_modules_line(False)


def test_rmmod_force_removes_a_permanent_module_and_taints_R(k):
    """try_force_unload() with O_TRUNC (CONFIG_MODULE_FORCE_UNLOAD=y on Debian): TAINT_FORCED_RMMOD."""
    assert k.load_module(ModuleDef(name="lf_noexit", description="init, no exit", init=lambda ctx: 0)) == 0
    assert k.modules.delete("lf_noexit", force=True) == 0
    assert k.modules.get("lf_noexit") is None
    assert k.modules.tainted & (1 << 3)


def test_a_module_without_init_or_exit_is_removable(k):
    assert k.load_module(ModuleDef(name="lf_bare", description="no init, no exit")) == 0
    assert k.delete_module("lf_bare") == 0


def test_a_module_in_use_is_ewouldblock_unless_forced(k):
    assert k.load_module(ModuleDef(name="lf_used", description="used", init=lambda ctx: 0,
                                   exit=lambda ctx: None)) == 0
    mod = k.modules.get("lf_used")
    assert k.modules.try_module_get(mod)
    assert k.delete_module("lf_used") == -errno.EWOULDBLOCK
    assert k.modules.delete("lf_used", force=True) == 0


def test_a_coming_module_is_ebusy(k):
    """rmmod while the module's init runs: MODULE_STATE_COMING, 'already dying' -> EBUSY."""
    seen = {}

    def init(ctx) -> int:
        seen["state"] = ctx.module.state
        seen["ret"] = ctx.kernel.delete_module(ctx.name)
        return 0

    assert k.load_module(ModuleDef(name="lf_coming", description="coming", init=init,
                                   exit=lambda ctx: None)) == 0
    assert seen == {"state": ModuleState.COMING, "ret": -errno.EBUSY}
    assert k.delete_module("lf_coming") == 0


def test_a_going_module_is_ebusy(k):
    seen = {}

    def exit_(ctx) -> None:
        seen["ret"] = ctx.kernel.delete_module(ctx.name)

    assert k.load_module(ModuleDef(name="lf_going", description="going", init=lambda ctx: 0, exit=exit_)) == 0
    assert k.delete_module("lf_going") == 0
    assert seen == {"ret": -errno.EBUSY}


def test_an_unknown_module_is_enoent(k):
    assert k.delete_module("lf_nothing") == -errno.ENOENT


# -- 2. duplicate objects and functions in one patch ------------------------------------------------


def _lp(name: str, objs: list[Object], replace: bool = False) -> ModuleDef:
    return ModuleDef(name=name, description="livepatch", livepatch=True, patch=Patch(objs=objs, replace=replace))


def test_a_duplicate_function_fails_with_eexist_and_the_sysfs_messages(k):
    ret, log = _load(k, _lp("lf_dupfunc", [Object(None, [Func("cmdline_proc_show", _tag("a")),
                                                         Func("cmdline_proc_show", _tag("b"), old_sympos=1)])]))
    assert ret == -errno.EEXIST
    texts = [t for _, t in log]
    i = texts.index("sysfs: cannot create duplicate filename '/kernel/livepatch/lf_dupfunc/vmlinux/cmdline_proc_show,1'")
    assert log[i][0] == 4  # pr_warn
    assert texts[i + 1].startswith("CPU: 0 UID: 0 PID: ")  # dump_stack()
    assert " sysfs_warn_dup+0x0/0x40" in texts and " init_module+0x0/0x40 [lf_dupfunc]" in texts
    err = ("kobject: kobject_add_internal failed for cmdline_proc_show,1 with -EEXIST, don't try to register "
           "things with the same name in the same directory.")
    assert (3, err) in log and texts.index(err) > i
    assert not any(t.startswith("livepatch: enabling patch") for t in texts)  # klp_init_patch failed first
    assert k.modules.get("lf_dupfunc") is None and not k.livepatch.sysfs_patches
    assert k.call(k.current or k.task_for(k.tasks.new_pid(), "cat"), "vmlinux", "cmdline_proc_show") != "a"


def test_a_duplicate_object_fails_with_eexist(k):
    ret, log = _load(k, _lp("lf_dupobj", [Object(None, [Func("cmdline_proc_show", _tag("a"))]),
                                          Object(None, [Func("meminfo_proc_show", _tag("b"))])]))
    assert ret == -errno.EEXIST
    texts = [t for _, t in log]
    assert "sysfs: cannot create duplicate filename '/kernel/livepatch/lf_dupobj/vmlinux'" in texts
    assert any(t.startswith("kobject: kobject_add_internal failed for vmlinux with -EEXIST") for t in texts)


def test_kobject_messages_have_no_prefix_before_6_4():
    k = Kernel(version=KernelVersion.parse("6.1"), ncpus=1)
    ret, log = _load(k, _lp("lf_dupfunc", [Object(None, [Func("cmdline_proc_show", _tag("a")),
                                                         Func("cmdline_proc_show", _tag("b"))])]))
    assert ret == -errno.EEXIST
    assert any(t.startswith("kobject_add_internal failed for cmdline_proc_show,1 with -EEXIST") for _, t in log)


@pytest.mark.parametrize("version, ok", [("6.12", True), ("6.1", True), ("mainline", True),
                                         ("6.19", True), ("6.5", False), ("6.14", False)])
def test_replace_with_sympos_0_over_sympos_1(version, ok):
    """klp_find_func() matches old_sympos 0 and 1 only with "livepatch: Match old_sympos 0 and 1 in
    klp_find_func()" (6.19, and the stable trees it went to): before, the replace patch gets a nop
    for cmdline_proc_show,1 beside its own cmdline_proc_show,0 -- the same directory name."""
    k = Kernel(version=KernelVersion.parse(version), ncpus=1)
    assert _load(k, _lp("lf_one", [Object(None, [Func("cmdline_proc_show", _tag("one"), old_sympos=1)])]))[0] == 0
    k.advance(10 * 10**9)
    assert not k.livepatch.in_transition()
    ret, log = _load(k, _lp("lf_two", [Object(None, [Func("cmdline_proc_show", _tag("two"))])], replace=True))
    assert ret == (0 if ok else -errno.EEXIST)
    dup = "sysfs: cannot create duplicate filename '/kernel/livepatch/lf_two/vmlinux/cmdline_proc_show,1'"
    assert (dup in [t for _, t in log]) is not ok


# -- 3. load_module()'s order -------------------------------------------------------------------------


def _target(**kw) -> ModuleDef:
    return ModuleDef(name="lf_target", description="target", params=[Param("p", "int", 0, 0o644, "a number")],
                     functions=[Function("lf_fn", _tag("orig"))], init=lambda ctx: 0, exit=lambda ctx: None, **kw)


def test_a_parameter_error_comes_after_the_patch_is_applied_and_before_it_is_reverted(k):
    assert _load(k, _lp("lf_lp", [Object("lf_target", [Func("lf_fn", _tag("new"))])]))[0] == 0
    k.advance(10 * 10**9)
    ret, log = _load(k, _target(), "p=abc")
    assert ret == -errno.EINVAL
    assert [t for _, t in log] == [
        "livepatch: applying patch 'lf_lp' to loading module 'lf_target'",
        "lf_target: `abc' invalid for parameter `p'",
        "livepatch: reverting patch 'lf_lp' on unloading module 'lf_target'",
    ]
    assert k.modules.get("lf_target") is None and not k.symbols.find("lf_target", "lf_fn")
    assert _load(k, _target(), "p=3")[0] == 0  # and it loads cleanly afterwards, patched
    assert k.modules.get("lf_target").params["p"].value == 3


def test_an_unknown_symbol_fails_before_any_livepatch_hook(k):
    assert _load(k, _lp("lf_lp", [Object("lf_target", [Func("lf_fn", _tag("new"))])]))[0] == 0
    k.advance(10 * 10**9)
    ret, log = _load(k, _target(imports=["lf_missing", "printk", "lf_gone"]), "p=abc")
    assert ret == -errno.ENOENT
    assert [t for _, t in log] == ["lf_target: Unknown symbol lf_missing (err -2)",
                                   "lf_target: Unknown symbol lf_gone (err -2)"]
    assert all(lvl == 4 for lvl, _ in log)
    assert k.modules.get("lf_target") is None


def test_symbols_of_loaded_modules_resolve(k):
    assert _load(k, _target())[0] == 0
    user = ModuleDef(name="lf_user", description="uses lf_fn", imports=["lf_fn"])
    assert _load(k, user)[0] == 0


# -- 4. multi-line records, the ring's size ---------------------------------------------------------

SUSPICIOUS = ("do_init_module: 'lf_pos'->init suspiciously returned 1, it should follow 0/-E convention\n"
              "do_init_module: loading module anyway...")


def test_the_positive_init_warning_is_one_record(k):
    ret, log = _load(k, ModuleDef(name="lf_pos", description="returns 1", init=lambda ctx: 1,
                                  exit=lambda ctx: None))
    assert ret == 0
    assert (4, SUSPICIOUS) in log
    assert not any(t == "do_init_module: loading module anyway..." for _, t in log)


def test_kmsg_escapes_the_newline_and_dmesg_indents_the_continuation():
    """/dev/kmsg: msg_add_ext_text() escapes every byte below ' ' (\\x0a); util-linux dmesg
    prints the continuation under the text, as tests/transcripts/6.12/callbacks.txt shows."""
    from livefs.fs.devfs import format_record
    from livefs.kernel.printk import LogRecord
    from livefs.shim import dmesg_record

    rec = LogRecord(7, 7_890_513_000, 0, 4, SUSPICIOUS, "T196")
    raw = format_record(rec).decode()
    assert raw == ("4,7,7890513,-;do_init_module: 'lf_pos'->init suspiciously returned 1, it should follow 0/-E "
                   "convention\\x0ado_init_module: loading module anyway...\n")
    header, _, text = raw.rstrip("\n").partition(";")
    assert dmesg_record(text, 7_890_513).split("\n") == [
        "[    7.890513] do_init_module: 'lf_pos'->init suspiciously returned 1, it should follow 0/-E convention",
        "               do_init_module: loading module anyway...",
    ]
    assert dmesg_record(text, 7_890_513, notime=True).split("\n")[1] == "do_init_module: loading module anyway..."
    # and the recording has both forms
    from pathlib import Path
    lines = (Path(__file__).parent / "transcripts" / "6.12" / "callbacks.txt").read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("[") and "suspiciously returned 1" in ln)
    assert lines[at + 1] == "               do_init_module: loading module anyway..."


def test_the_ring_is_bounded_by_bytes_not_records():
    """CONFIG_LOG_BUF_SHIFT=17 (Debian x86_64): 128 KiB of text, 4096 descriptors (one per 32 bytes)."""
    from livefs.kernel.clock import Clock
    from livefs.kernel.printk import Printk, log_buf_len

    assert log_buf_len(2) == log_buf_len(17) == 1 << 17
    assert log_buf_len(18) == 1 << 18  # log_buf_add_cpu(): 17 more CPUs' 4 KiB exceed half the buffer
    short, long_ = Printk(Clock()), Printk(Clock())
    for i in range(10000):
        short.log(6, "x")            # 16 bytes a block: the descriptors run out first
        long_.log(6, "y" * 200)      # 208 bytes a block: the text ring runs out first
    assert len(short.records) == 4096
    assert len(long_.records) in (629, 630)  # 131072 / 208, less what a wrap leaves unused
    assert long_.first_seq() == 10000 - len(long_.records)
    assert long_.record_at(long_.first_seq()) is long_.records[0]


# -- 5. MODULE_PARM_DESC optional, parameters in kmod's order, the size -------------------------------


def _ko(tmp_path, defn: ModuleDef):
    from livefs import modimage
    from livefs.catalog.image import modinfo_fields

    path = tmp_path / f"{defn.name}.ko"
    path.write_bytes(modimage.build(defn.name, modinfo_fields(defn, "6.12.0-livefs"), modimage.make_payload({})))
    return path


def _modinfo(capsys, *argv) -> list[str]:
    from livefs.shim import main

    assert main("modinfo", [str(a) for a in argv]) == 0
    return capsys.readouterr().out.splitlines()


PARAMS = ModuleDef(name="lf_params", description="params", params=[
    Param("first", "int", 0, 0o644, "the first"), Param("bare", "bool", False, 0o644),
    Param("last", "uint", 1, 0o644, "the last")])


def test_a_parameter_without_description_has_no_parm_string(tmp_path):
    from livefs import modimage

    info = modimage.modinfo(_ko(tmp_path, PARAMS).read_bytes())
    assert ("parmtype", "bare:bool") in info and not any(v.startswith("bare:") for k, v in info if k == "parm")
    # the compiler's order: the last definition first
    assert [v.partition(":")[0] for k, v in info if k == "parmtype"] == ["last", "bare", "first"]


def test_modinfo_prints_parameters_as_kmod_does(tmp_path, capsys):
    ko = _ko(tmp_path, PARAMS)
    out = _modinfo(capsys, ko)
    assert [ln for ln in out if ln.startswith("parm:")] == [
        "parm:           first:the first (int)",
        "parm:           bare:bool",
        "parm:           last:the last (uint)",
    ]
    assert _modinfo(capsys, "-p", ko) == ["first:the first (int)", "bare: (bool)", "last:the last (uint)"]
    assert _modinfo(capsys, "-F", "parm", ko) == _modinfo(capsys, "-p", ko)
    assert _modinfo(capsys, "-F", "parmtype", ko) == ["last:uint", "bare:bool", "first:int"]
    assert _modinfo(capsys, "-d", ko) == ["params"]


def test_the_oracles_lp_busy_has_a_parameter_without_description(tmp_path, capsys):
    """lp_busy.c: module_param(hold_max_ms, uint, 0644) with no MODULE_PARM_DESC."""
    from livefs.catalog import catalog

    assert _modinfo(capsys, "-p", _ko(tmp_path, catalog()["lp_busy"]))[1] == "hold_max_ms: (uint)"


def test_lsmod_size_is_derived_from_the_text(k):
    from livefs.kernel.moddef import module_size

    small = ModuleDef(name="lf_small", description="small", functions=[Function("f", _tag("x"))],
                      exit=lambda ctx: None)
    big = ModuleDef(name="lf_big", description="big", functions=[Function("f", _tag("x"), size=5000)])
    declared = ModuleDef(name="lf_declared", description="declared", size=12345)
    assert module_size(small) == 12288  # one page each of text, data, rodata: lp_busy_target's 12288
    assert module_size(big) == 16384
    assert module_size(declared) == 12345
    assert k.load_module(big) == 0
    assert k.modules.get("lf_big").proc_modules_line(False).startswith("lf_big 16384 0 - Live ")
    from livefs.catalog import catalog
    # a livepatch module keeps its whole symbol table in core data: lp_busy's 16384 on 6.12
    assert module_size(catalog()["lp_busy"]) == 16384 and module_size(catalog()["lp_busy_target"]) == 12288


def test_dynamic_debug_queries_split_on_the_kernels_isspace_only():
    """ddebug_tokenize() splits on isspace(): ' \\t\\n\\v\\f\\r', not on \\x1c-\\x1f as Python's split() does."""
    from livefs.kernel.printk import DynamicDebug

    assert DynamicDebug().exec_queries("\x1c") == -errno.EINVAL
    assert DynamicDebug().exec_queries(" \t+p\v") == 0


# -- 6. /proc/kallsyms: a module's symbol table beyond its functions -----------------------------------


def _module_syms(k: Kernel, name: str) -> set[str]:
    return {" ".join(ln.split(" ")[1:]).removesuffix(f"\t[{name}]") for ln in k.kallsyms().splitlines()
            if ln.endswith(f"\t[{name}]")}


def test_an_ordinary_module_keeps_only_its_core_symbols(k):
    from livefs.catalog import catalog

    assert _load(k, catalog()["lp_busy_target"], "hold=0")[0] == 0
    syms = _module_syms(k, "lp_busy_target")
    assert {"d __this_module", "d __start_alloc_tags", "d __stop_alloc_tags", "r _note_18", "r _note_19",
            "r orc_header", "d hold", "d hold_max_ms", "r __param_hold", "r __param_str_hold",
            "r __param_hold_max_ms", "r __param_str_hold_max_ms", "b pde", "b worker",
            "t cleanup_module", "t __pfx_cleanup_module", "t target_exit", "t __pfx_target_exit",
            "d __UNIQUE_ID___addressable_cleanup_module459", "t lp_busy_target_wait"} <= syms
    # no init code (freed with nothing traced), no modinfo, file names or undefined symbols
    assert not [s for s in syms if s.split()[0] in "?auT" or "init" in s]


def test_a_livepatch_module_keeps_its_whole_symbol_table_and_its_traced_init(k):
    from livefs.catalog import catalog

    assert _load(k, catalog()["lp_cmdline"])[0] == 0
    syms = _module_syms(k, "lp_cmdline")
    assert {"? __UNIQUE_ID_name451", "? __UNIQUE_ID_livepatch502", "? ____versions", "a lp_cmdline.c",
            "a lp_cmdline.mod.c", "a module-common.c", "t init_module", "t oracle_init", "t __pfx_oracle_init",
            "d __UNIQUE_ID___addressable_init_module498", "d oracle_patch", "d vmlinux_funcs",
            "u __fentry__", "u klp_enable_patch", "u seq_write", "t oracle_cmdline_show",
            "T oracle_init"} <= syms  # its own ftrace ops was registered when init memory was freed


def test_an_init_freed_while_a_patch_is_registered_stays_as_T(k):
    from livefs.catalog import catalog

    assert _load(k, catalog()["lp_cmdline"])[0] == 0
    k.settle()
    assert _load(k, catalog()["lp_busy_target"], "hold=0")[0] == 0
    assert "T target_init" in _module_syms(k, "lp_busy_target")


def test_a_module_param_cb_has_param_symbols_and_no_variable(k):
    from livefs.catalog import catalog

    assert _load(k, catalog()["test_klp_mod_target"])[0] == 0
    syms = _module_syms(k, "test_klp_mod_target")
    assert {"r __param_klp_mod_arg", "r __param_str_klp_mod_arg", "t test_klp_mod_target_exit"} <= syms
    assert not [s for s in syms if s.endswith(" klp_mod_arg")]
