"""Fidelity of the views (issue 12): what the mock's files show beside the
livepatch tree -- the host's other /sys/kernel entries, kprobes, ftrace and
dynamic debug files, module declarations as modinfo, lsmod and kallsyms show
them, and the newest upstream selftests' forms."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from conftest import livefs_cli
from livefs.fs.root import build_root
from livefs.fs.tree import Attr, Dir, Request, Symlink, nlink, resolve
from livefs.kernel.kernel import Kernel


def _req(k: Kernel) -> Request:
    return Request(k, k.task_for(900_001, "bash"))


# -- item 1: the host's other /sys/kernel entries, read-only ------------------------------

@pytest.fixture
def fake_host_sys_kernel(tmp_path: Path) -> Path:
    host = tmp_path / "sys_kernel"
    for d in ("mm/transparent_hugepage", "security", "debug/host_only", "tracing", "slab/kmalloc-8"):
        (host / d).mkdir(parents=True)
    (host / "rcu_expedited").write_text("0\n")
    (host / "rcu_expedited").chmod(0o644)
    (host / "notes").write_bytes(b"\x04\x00\x00\x00" * 41)
    (host / "notes").chmod(0o444)
    (host / "slab/:a-0000008").symlink_to("kmalloc-8")
    return host


def test_sys_kernel_serves_the_hosts_other_entries_read_only(fake_host_sys_kernel):
    k = Kernel(ncpus=1)
    req = _req(k)
    root = build_root(host_sys_kernel=str(fake_host_sys_kernel))
    kernel = resolve(root, req, "sys/kernel")
    names = sorted(n for n, _ in kernel.listing(req))
    assert names == ["debug", "livepatch", "mm", "notes", "rcu_expedited", "security", "slab", "tracing"]
    # the mock's debugfs and tracefs, not the host's
    assert resolve(root, req, "sys/kernel/debug/host_only") is None
    assert resolve(root, req, "sys/kernel/debug/dynamic_debug/control") is not None
    # `..` of /sys/kernel/livepatch: 2 + one per subdirectory, as kernfs counts
    assert nlink(kernel, req) == 2 + 6
    assert nlink(resolve(root, req, "sys/kernel/mm"), req) == 3
    rcu = resolve(root, req, "sys/kernel/rcu_expedited")
    assert isinstance(rcu, Attr) and rcu.store is None and rcu.perm == 0o444
    assert rcu.open(req, os.O_RDONLY).read(req, 100, 0) == b"0\n"
    notes = resolve(root, req, "sys/kernel/notes")
    assert notes.size() == 164
    link = resolve(root, req, "sys/kernel/slab/:a-0000008")
    assert isinstance(link, Symlink) and link.target(req) == "kmalloc-8"
    # a model without a host (tests, the state machine) shows only its own
    bare = resolve(build_root(), req, "sys/kernel")
    assert sorted(n for n, _ in bare.listing(req)) == ["debug", "livepatch", "tracing"]


def _host_sys_kernel() -> tuple[list[str], int]:
    names = set(os.listdir("/sys/kernel")) | {"debug", "livepatch", "tracing"}
    dirs = sum(1 for n in names if n in ("debug", "livepatch", "tracing") or
               stat.S_ISDIR(os.lstat(f"/sys/kernel/{n}").st_mode))
    return sorted(names), 2 + dirs


def test_livefs_run_shows_the_hosts_sys_kernel_and_refuses_writes(require_fuse, tmp_path):
    host_files = [n for n in sorted(os.listdir("/sys/kernel"))
                  if stat.S_ISREG(os.lstat(f"/sys/kernel/{n}").st_mode) and n not in ("livepatch",)]
    writable = next((n for n in host_files if os.stat(f"/sys/kernel/{n}").st_mode & 0o200), None)
    script = ("ls -a /sys/kernel | tail -n +3; echo ---; stat -c %h /sys/kernel/livepatch/..; echo ---; "
              "ls -la /sys/kernel/livepatch | awk 'NR>1 {print $1, $2, $NF}'")
    if writable:
        script += f"; echo ---; stat -c %A /sys/kernel/{writable}; echo 1 > /sys/kernel/{writable}; echo rc=$?"
    r = livefs_cli("run", "--", "bash", "-c", script, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    parts = r.stdout.split("---\n")
    names, links = _host_sys_kernel()
    assert sorted(parts[0].split()) == names
    assert int(parts[1]) == links
    assert parts[2].split("\n")[1].split() == ["drwxr-xr-x", str(links), ".."]
    if writable:
        mode, rc = parts[3].split("\n")[:2]
        assert "w" not in mode and rc == "rc=1", parts[3]
        assert "Permission denied" in r.stderr


# -- item 2: kprobes/enabled (kernel/kprobes.c write_enabled_file_bool, arm_all_kprobes) ------

def _file_write(k: Kernel, path: str, data: bytes, root: Dir | None = None) -> int:
    req = _req(k)
    node = resolve(root or build_root(), req, path)
    with k.syscall(req.task):
        return node.open(req, os.O_WRONLY).write(req, data)


def _file_read(k: Kernel, path: str) -> str:
    req = _req(k)
    return resolve(build_root(), req, path).open(req, os.O_RDONLY).read(req, 1 << 20, 0).decode()


KPROBES_ENABLED = "sys/kernel/debug/kprobes/enabled"


def test_rearming_kprobes_that_cannot_arm_returns_the_error_and_warns(machine):
    k = machine.k
    assert machine.insmod("test_klp_kprobe", "has_post_handler=1") == 0
    assert _file_write(k, KPROBES_ENABLED, b"0\n") == 2
    assert machine.log()[-1] == "kprobes: Kprobes globally disabled"
    assert machine.insmod("test_klp_livepatch") == 0  # nothing armed: the IPMODIFY site is free
    k.settle()
    machine.set_mark()
    # the probe's IPMODIFY ops cannot share cmdline_proc_show with the patch
    assert _file_write(k, KPROBES_ENABLED, b"1\n") == -errno.EBUSY
    rec = k.printk.records[-1]
    assert (rec.level, rec.text) == (4, "kprobes: Kprobes globally enabled, but failed to enable 1 out of 1 "
                                        "probes. Please check which kprobes are kept disabled via debugfs.")
    # globally enabled all the same (kprobes_all_disarmed is false), the probe not armed
    assert _file_read(k, KPROBES_ENABLED) == "1\n" and not k.kprobes.probes[0].armed
    assert _file_write(k, KPROBES_ENABLED, b"1\n") == 2  # already enabled: nothing to do, no message
    assert machine.log()[-1].startswith("kprobes: Kprobes globally enabled, but")
    machine.write("test_klp_livepatch", "enabled", b"0")
    k.settle()
    assert _file_write(k, KPROBES_ENABLED, b"0") == 1 and _file_write(k, KPROBES_ENABLED, b"on") == 2
    assert machine.log()[-2:] == ["kprobes: Kprobes globally disabled", "kprobes: Kprobes globally enabled"]
    assert k.kprobes.probes[0].armed


@pytest.mark.parametrize("data", [b"", b"\n", b" 1", b"x", b"o"])
def test_kprobes_enabled_refuses_what_kstrtobool_refuses(machine, data):
    assert _file_write(machine.k, KPROBES_ENABLED, data) == -errno.EINVAL


# -- item 3: tracing_on, ftrace_enabled, enabled_functions ----------------------------------

@pytest.mark.parametrize("data,ret,on", [
    (b"1\n", 2, True), (b"+5\n", 3, True), (b"010", 3, True), (b"0\n", 2, False), (b"00", 2, False),
    (b"0x1", -errno.EINVAL, None), (b" 1", -errno.EINVAL, None), (b"1 ", -errno.EINVAL, None),
    (b"-1", -errno.EINVAL, None), (b"1\n\n", -errno.EINVAL, None), (b"\n", -errno.EINVAL, None),
    (b"18446744073709551616", -errno.ERANGE, None), (b"18446744073709551615", 20, True),
])
def test_tracing_on_parses_as_kstrtoul_base_10(machine, data, ret, on):
    k = machine.k
    k.tracer.tracing_on = not on if on is not None else False
    assert _file_write(k, "sys/kernel/tracing/tracing_on", data) == ret
    if on is not None:
        assert _file_read(k, "sys/kernel/tracing/tracing_on") == f"{int(on)}\n"


FTRACE_ENABLED = "proc/sys/kernel/ftrace_enabled"


@pytest.mark.parametrize("data,shown", [
    (b"0\n", "0"), (b"5\n", "5"), (b" \t-7\n", "-7"), (b"0x10", "16"), (b"010\n", "8"), (b"3 junk", "3"),
    (b"2147483647", "2147483647"), (b"-2147483648", "-2147483648"),
])
def test_ftrace_enabled_keeps_the_int_proc_dointvec_stored(machine, data, shown):
    k = machine.k
    assert _file_write(k, FTRACE_ENABLED, data) == len(data)
    assert _file_read(k, FTRACE_ENABLED) == f"{shown}\n"
    assert k.ftrace.enabled == (shown != "0")


@pytest.mark.parametrize("data", [b"", b"\n", b"1x", b"08", b"0x", b"-", b"2147483648", b"-2147483649",
                                  b"1" * 21, b"abc"])
def test_ftrace_enabled_refuses_what_proc_dointvec_refuses(machine, data):
    k = machine.k
    assert _file_write(k, FTRACE_ENABLED, data) in (-errno.EINVAL, 0 if not data else -errno.EINVAL)
    assert _file_read(k, FTRACE_ENABLED) == "1\n" and k.ftrace.enabled


def test_ftrace_enabled_off_under_a_livepatch_is_ebusy_and_reads_1(machine):
    k = machine.k
    assert _file_write(k, FTRACE_ENABLED, b"7\n") == 2
    assert machine.insmod("test_klp_livepatch") == 0
    assert _file_write(k, FTRACE_ENABLED, b"0\n") == -errno.EBUSY
    assert _file_read(k, FTRACE_ENABLED) == "1\n"


def _enabled_functions(k: Kernel) -> list[str]:
    return [line.split("\t")[0] for line in _file_read(k, "sys/kernel/tracing/enabled_functions").splitlines()]


def test_enabled_functions_marks_m_only_once_an_ipmodify_ops_touched_the_record(machine):
    k = machine.k
    assert machine.insmod("test_klp_kprobe", "has_post_handler=0") == 0
    assert _enabled_functions(k) == ["cmdline_proc_show (1) R         "]
    assert machine.insmod("test_klp_livepatch") == 0
    k.settle()
    assert _enabled_functions(k)[0] == "cmdline_proc_show (2) R I     M  ->ftrace_ops_list_func+0x0/0x200"
    machine.write("test_klp_livepatch", "enabled", b"0")
    k.settle()
    # FTRACE_FL_MODIFIED stays once set
    assert _enabled_functions(k) == ["cmdline_proc_show (1) R       M "]


# -- item 3: dynamic_debug/control (lib/dynamic_debug.c ddebug_proc_show, opt_array) ---------

def _control(k: Kernel) -> list[str]:
    return _file_read(k, "sys/kernel/debug/dynamic_debug/control").splitlines()


@pytest.mark.parametrize("version,query,flags", [
    ("mainline", "+pmflst", "pmfslt"), ("6.12", "+tlsfmp", "pmfslt"), ("6.1", "+pmflt", "pmflt"),
])
def test_dyndbg_control_lists_flags_in_opt_array_order(version, query, flags):
    from livefs.kernel.version import KernelVersion
    k = Kernel(version=KernelVersion.parse(version), ncpus=1)
    assert _file_write(k, "sys/kernel/debug/dynamic_debug/control",
                       f"func klp_try_switch_task {query}\n".encode()) > 0
    line = next(line for line in _control(k) if "]klp_try_switch_task " in line)
    assert f" ={flags} " in line


def test_dyndbg_source_name_flag_is_unknown_before_6_2():
    from livefs.kernel.version import KernelVersion
    k = Kernel(version=KernelVersion.parse("6.1"), ncpus=1)
    assert _file_write(k, "sys/kernel/debug/dynamic_debug/control", b"func klp_try_switch_task +s\n") \
        == -errno.EINVAL


def test_dyndbg_control_escapes_space_characters_only():
    from livefs.kernel.printk import DebugSite
    k = Kernel(ncpus=1)
    k.dyndbg.add_site(DebugSite("lp", "lp.c", 7, "lp_fn", 'a\t"b"\\c\r\n'))
    assert _control(k)[-1] == 'lp.c:7 [lp]lp_fn =_ "a\\t"b"\\c\\r\\n"'
