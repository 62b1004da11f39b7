"""Fidelity with a real 6.12 kernel (issue 12): what tests/transcripts/6.12
recorded, checked here on the model and through a real mount."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from conftest import livefs_cli, sh
from test_fuse_mount import modules, shim_env  # noqa: F401 (a fixture)


# -- /proc/version: version_proc_show in vmlinux ------------------------------------------

# linux_proc_banner: "%s version %s (BY@HOST) (COMPILER) %s\n" (init/version.c)
PROC_VERSION = re.compile(r"Linux version (\S+) \(\S+@\S+\) \(.+\) (#1 .+)\n")


def test_version_proc_show_prints_the_banner_and_can_be_livepatched(machine):
    k = machine.k
    text = machine.cat("version_proc_show")
    m = PROC_VERSION.fullmatch(text)
    assert m is not None, text
    assert m.group(1) == k.utsname.release == k.version.release and m.group(2) == k.utsname.version
    # the boot log starts with linux_banner, as /dev/kmsg's first record shows
    first = k.printk.records[0]
    assert (first.seq, first.level, first.ts_ns) == (0, 5, 0) and first.text + "\n" == text
    assert machine.insmod("lp_callbacks") == 0
    k.settle()
    assert machine.cat("version_proc_show") == "LP_CALLBACKS marker: /proc/version patched by lp_callbacks\n"


def test_proc_version_is_served_by_the_model(mnt, modules):
    before = Path(f"{mnt}/proc/version").read_text()
    assert PROC_VERSION.fullmatch(before), before
    r = sh(f"insmod {modules}/lp_callbacks.ko && livefs wait --mount {mnt} && cat {mnt}/proc/version",
           env=shim_env(mnt))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "LP_CALLBACKS marker: /proc/version patched by lp_callbacks\n"
    r = sh(f"echo 0 > {mnt}/sys/kernel/livepatch/lp_callbacks/enabled && livefs wait --mount {mnt} "
           f"&& cat {mnt}/proc/version", env=shim_env(mnt))
    assert r.stdout == before


# -- parameter errors (kernel/params.c parse_args, lib/kstrtox.c) --------------------------

@pytest.mark.parametrize("args,ret,message", [
    ("pre_patch_ret=abc", -errno.EINVAL, "`abc' invalid for parameter `pre_patch_ret'"),
    ("pre_patch_ret=", -errno.EINVAL, "`' invalid for parameter `pre_patch_ret'"),
    ("pre_patch_ret", -errno.EINVAL, "`' invalid for parameter `pre_patch_ret'"),
    ("pre_patch_ret=99999999999", -errno.ERANGE, "`99999999999' invalid for parameter `pre_patch_ret'"),
    ("pre_patch_ret=2147483648", -errno.ERANGE, "`2147483648' invalid for parameter `pre_patch_ret'"),
    ("pre_patch_ret=-2147483649", -errno.ERANGE, "`-2147483649' invalid for parameter `pre_patch_ret'"),
    ("pre_patch_ret=0x1ffffffffffffffff", -errno.ERANGE,
     "`0x1ffffffffffffffff' invalid for parameter `pre_patch_ret'"),
])
def test_insmod_parameter_errors_quote_and_range(machine, args, ret, message):
    assert machine.insmod("lp_callbacks", args) == ret
    assert machine.log()[-1] == f"lp_callbacks: {message}"
    assert machine.k.modules.get("lp_callbacks") is None


def test_uint_parameter_takes_up_to_uint_max(machine):
    assert machine.insmod("lp_busy_target", "hold_max_ms=-1") == -errno.EINVAL
    assert machine.log()[-1] == "lp_busy_target: `-1' invalid for parameter `hold_max_ms'"
    assert machine.insmod("lp_busy_target", "hold_max_ms=4294967296") == -errno.ERANGE
    assert machine.insmod("lp_busy_target", "hold=0 hold_max_ms=4294967295") == 0
    mod = machine.k.modules.get("lp_busy_target")
    assert mod.params["hold_max_ms"].show() == "4294967295\n"
    store = machine.k.modules.param_store
    assert store(mod, "hold_max_ms", b"4294967296\n") == -errno.ERANGE
    assert store(mod, "hold_max_ms", b"-1\n") == store(mod, "hold_max_ms", b"12x\n") == -errno.EINVAL
    assert store(mod, "hold_max_ms", b"+0x20\n") == 0 and mod.params["hold_max_ms"].value == 32


def test_every_bad_parameter_is_reported_and_the_last_error_wins(machine):
    assert machine.insmod("lp_busy_target", "hold_max_ms=4294967296 hold=maybe") == -errno.EINVAL
    assert machine.log()[-2:] == ["lp_busy_target: `4294967296' invalid for parameter `hold_max_ms'",
                                  "lp_busy_target: `maybe' invalid for parameter `hold'"]


def test_sysfs_parameter_write_out_of_range_is_erange(mnt, modules):
    r = sh(f"insmod {modules}/lp_busy_target.ko hold=0 hold_max_ms=300", env=shim_env(mnt))
    assert r.returncode == 0, r.stderr
    param = f"{mnt}/sys/module/lp_busy_target/parameters/hold_max_ms"
    r = sh(f"echo 4294967296 > {param}; echo abc > {param}; echo 4294967295 > {param}; cat {param}")
    assert r.stderr.splitlines() == [
        "bash: line 1: echo: write error: Numerical result out of range",
        "bash: line 1: echo: write error: Invalid argument"], r.stderr
    assert r.stdout == "4294967295\n"
    r = sh(f"insmod {modules}/lp_callbacks.ko pre_patch_ret=2147483648", env=shim_env(mnt))
    assert r.returncode == 1
    assert r.stderr.endswith("lp_callbacks.ko: Numerical result out of range\n"), r.stderr
    sh("rmmod lp_busy_target", env=shim_env(mnt))


# -- /proc/<pid>/{stat,status,cmdline} of model tasks (fs/proc/array.c) ----------------------

def _proc_file(k, pid: int, name: str) -> bytes:
    from livefs.fs.procfs import proc_dir
    from livefs.fs.tree import Request, resolve
    req = Request(k, k.tasks.get(1))
    node = resolve(proc_dir(), req, f"{pid}/{name}")
    assert node is not None, f"no /proc/{pid}/{name}"
    return node.open(req, os.O_RDONLY).read(req, 1 << 16, 0)


def test_model_tasks_have_stat_status_and_cmdline(machine):
    from livefs.kernel.tasks import TaskKind
    k = machine.k
    stuck = k.sched.spawn(TaskKind.KTHREAD, "lp_stuck", k.vmlinux_func("cmdline_proc_show"), interruptible=False)
    user = k.sched.spawn(TaskKind.USER, "bob", None)
    stat = _proc_file(k, stuck.pid, "stat").decode()
    fields = stat.split()
    assert stat.endswith("\n") and len(fields) == 52  # 6.12's do_task_stat()
    assert fields[:6] == [str(stuck.pid), "(lp_stuck)", "D", "2", "0", "0"]
    assert int(fields[8]) & 0x200000  # PF_KTHREAD: ps shows it as [lp_stuck]
    status = _proc_file(k, stuck.pid, "status").decode().splitlines()
    assert status[:3] == ["Name:\tlp_stuck", "Umask:\t0000", "State:\tD (disk sleep)"]
    assert f"Pid:\t{stuck.pid}" in status and "PPid:\t2" in status and "Kthread:\t1" in status
    assert "Cpus_allowed_list:\t0" in status  # one model CPU
    assert _proc_file(k, stuck.pid, "cmdline") == b""
    assert _proc_file(k, user.pid, "cmdline") == b"bob\0"
    assert _proc_file(k, user.pid, "stat").split()[:4] == [str(user.pid).encode(), b"(bob)", b"R", b"1"]
    assert "Kthread:\t0" in _proc_file(k, user.pid, "status").decode().splitlines()
    assert _proc_file(k, 2, "task/2/stat").split()[1] == b"(kthreadd)"


def test_ps_and_pgrep_see_model_kthreads(require_fuse, tmp_path):
    r = livefs_cli("run", "--cpus", "2", "--", "bash", "-c",
                   'echo "spawn kthread lp_stuck cmdline_proc_show uninterruptible" > /sys/kernel/debug/livefs/tasks'
                   '; P=$(pgrep -x lp_stuck) && grep -E "^(Name|State|PPid):" /proc/$P/status'
                   ' && ps -o ppid=,stat=,args= -p $P', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == ["Name:\tlp_stuck", "State:\tD (disk sleep)", "PPid:\t2",
                                     "    2 D    [lp_stuck]", ""], r.stdout


# -- pids: below /proc/sys/kernel/pid_max (alloc_pid(), idr_alloc_cyclic) --------------------

def test_model_pids_stay_below_pid_max_and_wrap_to_reserved_pids():
    from livefs.kernel.kernel import Kernel
    from livefs.kernel.tasks import RESERVED_PIDS, TaskKind
    k = Kernel(ncpus=1, pid_max=1010)
    pids = [k.sched.spawn(TaskKind.KTHREAD, f"t{i}", None).pid for i in range(12)]
    assert pids == list(range(1000, 1010)) + [RESERVED_PIDS, RESERVED_PIDS + 1]
    k.exit_task(1003)
    k.tasks.next_pid = 1003
    assert k.sched.spawn(TaskKind.USER, "u", None).pid == 1003


def test_model_pids_skip_the_pids_the_host_holds():
    from livefs.kernel.kernel import Kernel
    from livefs.kernel.tasks import TaskKind
    host = {1000, 1001, 1003}
    k = Kernel(ncpus=1, pid_max=1005, pid_taken=host.__contains__)
    assert [k.sched.spawn(TaskKind.KTHREAD, f"t{i}", None).pid for i in range(3)] == [1002, 1004, 300]


def test_the_daemons_kernel_shares_the_hosts_pid_space():
    # a mount's model keeps below the host's pid_max and away from the host's
    # processes (this one among them)
    from livefs.kernel.tasks import TaskKind
    from livefs.kernel.version import KernelVersion
    from livefs.runtime.daemon import make_kernel
    k = make_kernel(KernelVersion.parse("6.12"), 1)
    host_pid_max = int(open("/proc/sys/kernel/pid_max").read())
    pid = k.sched.spawn(TaskKind.KTHREAD, "t", None).pid
    assert 300 <= pid < host_pid_max and not os.path.exists(f"/proc/{pid}")
    assert k.tasks.pid_max == host_pid_max and k.tasks.taken(os.getpid())


def test_model_kthreads_pids_are_below_the_pid_max_livefs_run_shows(require_fuse, tmp_path):
    r = livefs_cli("run", "--cpus", "2", "--", "bash", "-c",
                   'echo "spawn kthread lp_stuck cmdline_proc_show" > /sys/kernel/debug/livefs/tasks'
                   '; cat /proc/sys/kernel/pid_max; pgrep -x lp_stuck; pgrep -x kthreadd', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pid_max, *pids = (int(x) for x in r.stdout.split())
    assert pids and all(0 < pid < pid_max for pid in pids), r.stdout


# -- /proc/<pid>/stack (stack_trace_save_tsk()) -------------------------------------------------

# as Debian's 6.12.95 printed them (tests/transcripts/6.12/internals.txt, and a
# recording of the boot kthreads' stacks)
KTHREAD_BOTTOM = ["[<0>] kthread+0xd2/0x100", "[<0>] ret_from_fork+0x34/0x50", "[<0>] ret_from_fork_asm+0x1a/0x30"]


def test_proc_stack_of_a_module_kthread_has_real_offsets_and_the_fork_frames(machine):
    k = machine.k
    assert machine.insmod("lp_busy_target", "hold_max_ms=60000") == 0
    k.run_until(k.clock.now_ns + 500_000_000)
    worker = next(t for t in k.tasks.tasks.values() if t.comm == "lp_busy_worker")
    assert _proc_file(k, worker.pid, "stack").decode().splitlines() == [
        "[<0>] msleep+0x2b/0x40", "[<0>] lp_busy_target_wait+0x49/0x80 [lp_busy_target]",
        "[<0>] worker_fn+0x22/0x40 [lp_busy_target]"] + KTHREAD_BOTTOM
    # asleep in lp_busy's replacement: worker_fn's call site is the same one
    k.modules.get("lp_busy_target").params["hold"].value = False
    k.run_until(k.clock.now_ns + 200_000_000)
    assert machine.insmod("lp_busy", "hold=1") == 0
    k.modules.get("lp_busy_target").params["hold"].value = True
    k.run_until(k.clock.now_ns + 500_000_000)
    assert _proc_file(k, worker.pid, "stack").decode().splitlines() == [
        "[<0>] msleep+0x2b/0x40", "[<0>] new_wait+0x49/0x90 [lp_busy]",
        "[<0>] worker_fn+0x22/0x40 [lp_busy_target]"] + KTHREAD_BOTTOM


def test_proc_stack_of_the_boot_kthreads(machine):
    k = machine.k
    stacks = {t.comm: _proc_file(k, t.pid, "stack").decode().splitlines() for t in k.tasks.tasks.values()
              if t.pid > 1}
    assert stacks["kthreadd"] == ["[<0>] kthreadd+0x2d3/0x2f0"] + KTHREAD_BOTTOM[1:]
    assert stacks["ksoftirqd/0"] == stacks["migration/0"] == ["[<0>] smpboot_thread_fn+0x14c/0x1d0"] + KTHREAD_BOTTOM
    assert stacks["rcu_preempt"] == ["[<0>] rcu_gp_fqs_loop+0x140/0x530",
                                     "[<0>] rcu_gp_kthread+0xd7/0x190"] + KTHREAD_BOTTOM
    # the scheduler's own frames are left out (a call site nobody recorded shows +0x0)
    for comm, lines in stacks.items():
        assert all(re.fullmatch(r"\[<0>\] \w+\+0x[0-9a-f]+/0x[0-9a-f]+( \[\w+\])?", ln) for ln in lines), lines
        assert not any(ln.startswith("[<0>] schedule+") for ln in lines), comm


def test_proc_stack_of_a_task_in_a_syscall_starts_at_the_syscall_entry(machine):
    from livefs.kernel.tasks import TaskKind
    k = machine.k
    user = k.sched.spawn(TaskKind.USER, "bob", None)
    with k.syscall(user):
        with k.in_function("vmlinux", "ksys_read"):
            with k.in_function("vmlinux", "vfs_read"):
                lines = _proc_file(k, user.pid, "stack").decode().splitlines()
    assert lines == ["[<0>] vfs_read+" + lines[0].split("+")[1], "[<0>] ksys_read+0x6f/0xf0",
                     "[<0>] do_syscall_64+0x87/0x1b0", "[<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e"]


# -- /sys/module/<m> (kernel/module/sysfs.c, main.c modinfo_attrs) -----------------------------

# what 6.12 lists for lp_busy_target (tests/transcripts/6.12/internals.txt)
SECTIONS_612 = [".bss", ".call_sites", ".data", ".exit.data", ".exit.text", ".gnu.linkonce.this_module",
                ".ibt_endbr_seal", ".init.data", ".init.text", ".note.Linux", ".note.gnu.build-id",
                ".note.gnu.property", ".orc_header", ".orc_unwind", ".orc_unwind_ip", ".return_sites", ".rodata",
                ".rodata.str1.1", ".rodata.str1.8", ".strtab", ".symtab", ".text", "__mcount_loc", "__param",
                "__patchable_function_entries"]


def _sysfs(k, path: str):
    from livefs.fs.root import build_root
    from livefs.fs.tree import Request, resolve
    req = Request(k, k.tasks.get(1))
    return req, resolve(build_root(), req, path)


def test_sys_module_has_the_kernels_attributes_notes_and_sections(machine):
    from livefs.fs.tree import nlink
    k = machine.k
    assert machine.insmod("lp_busy_target", "hold_max_ms=60000") == 0
    req, d = _sysfs(k, "sys/module/lp_busy_target")
    listing = dict(d.listing(req))
    assert sorted(listing) == ["coresize", "holders", "initsize", "initstate", "notes", "parameters", "refcnt",
                               "sections", "taint", "uevent"]
    assert (listing["uevent"].perm, listing["coresize"].perm) == (0o200, 0o444)
    assert nlink(d, req) == 6  # holders, notes, parameters, sections: parameters/.. as 6.12 shows it

    def read(name: str) -> bytes:
        return listing[name].open(req, os.O_RDONLY).read(req, 4096, 0)

    assert (read("coresize"), read("initsize")) == (b"12288\n", b"0\n")
    notes = dict(listing["notes"].listing(req))
    assert {n: (a.perm, a.size()) for n, a in notes.items()} == {
        ".note.Linux": (0o444, 64), ".note.gnu.build-id": (0o444, 36), ".note.gnu.property": (0o444, 32)}
    sections = dict(listing["sections"].listing(req))
    assert sorted(sections) == SECTIONS_612
    assert all((a.perm, a.size()) == (0o400, 19) for a in sections.values())
    text = sections[".text"].open(req, os.O_RDONLY).read(req, 4096, 0)
    assert text == f"0x{k.modules.get('lp_busy_target').base:016x}\n".encode()
    # a livepatch module: no .ibt_endbr_seal (its functions are all address-taken), two pages of data
    assert machine.insmod("lp_busy") == 0
    req, d = _sysfs(k, "sys/module/lp_busy")
    listing = dict(d.listing(req))
    assert sorted(dict(listing["sections"].listing(req))) == [s for s in SECTIONS_612 if s != ".ibt_endbr_seal"]
    assert read("coresize") == b"16384\n"


@pytest.mark.parametrize("data,ret,warning", [
    (b"add\n", 4, None), (b"change", 6, None), (b"", 0, None),
    (b"bogus\n", -errno.EINVAL, "unknown uevent action string"),
    (b"\n", -errno.EINVAL, "unknown uevent action string"),
    (b"add 12345678-1234-1234-1234-123456789abc KEY=v\n", 47, None),
    (b"add not-a-uuid\n", -errno.EINVAL, "incorrect uevent action arguments"),
])
def test_sys_module_uevent_synthesizes_as_kobject_synth_uevent(machine, data, ret, warning):
    k = machine.k
    assert machine.insmod("lp_busy_target") == 0
    before = len(k.printk.records)
    req, node = _sysfs(k, "sys/module/lp_busy_target/uevent")
    assert node.open(req, os.O_WRONLY).write(req, data) == ret
    new = [r.text for r in list(k.printk.records)[before:]]
    assert new == ([f"synth uevent: /module/lp_busy_target: {warning}"] if warning else [])


# -- /proc/kallsyms ----------------------------------------------------------------------------

def _kallsyms(k) -> list[tuple[int, str, str]]:
    out = []
    for line in k.kallsyms().splitlines():
        addr, kind, rest = line.split(" ", 2)
        out.append((int(addr, 16), kind, rest))
    return out


def test_kallsyms_static_functions_prefix_symbols_and_module_space(machine):
    k = machine.k
    assert machine.insmod("lp_busy_target", "hold=0") == 0
    syms = _kallsyms(k)
    by_name = {rest: (addr, kind) for addr, kind, rest in syms}
    # static in fs/proc/cmdline.c and fs/proc/version.c, global in kernel/sched/core.c
    assert by_name["cmdline_proc_show"][1] == by_name["version_proc_show"][1] == "t"
    assert by_name["schedule"][1] == "T"
    # CONFIG_FUNCTION_PADDING_ALIGNMENT: __pfx_NAME, same type, the 16 bytes before NAME
    for name in ("cmdline_proc_show", "schedule", "lp_busy_target_wait\t[lp_busy_target]"):
        addr, kind = by_name[name]
        assert by_name[f"__pfx_{name}"] == (addr - 16, kind)
    # module text lives in module space, at the address /proc/modules gives the module
    base = k.modules.get("lp_busy_target").base
    assert by_name["lp_busy_target_wait\t[lp_busy_target]"] == (base + 16, "t")
    assert base >= 0xFFFFFFFFC0000000 > max(a for a, _, rest in syms if "\t[" not in rest)


def test_replacement_functions_stay_in_kallsyms_while_their_module_is_loaded(machine):
    k = machine.k
    assert machine.insmod("lp_cmdline") == 0 and machine.insmod("lp_replace") == 0
    k.settle()
    assert [p.name for p in k.livepatch.sysfs_patches] == ["lp_replace"]  # lp_cmdline's patch is freed
    names = [rest for _, _, rest in _kallsyms(k)]
    assert "oracle_cmdline_show\t[lp_cmdline]" in names and "oracle_cmdline_show\t[lp_replace]" in names
    from livefs.fs.tracefs import _available
    from livefs.fs.tree import Request
    assert "oracle_cmdline_show [lp_cmdline]" in _available(Request(k, machine.shell)).splitlines()
    assert machine.rmmod("lp_cmdline") == 0
    assert not any(rest.endswith("[lp_cmdline]") for _, _, rest in _kallsyms(k))


# -- /dev/kmsg positioning (kernel/printk/printk.c devkmsg_llseek, devkmsg_read) ------------------

def test_devkmsg_llseek_semantics(machine):
    from livefs.fs.devfs import KmsgHandle
    from livefs.fs.tree import Request
    k = machine.k
    req = Request(k, machine.shell)
    h = KmsgHandle(k.printk.first_seq(), True)
    assert h.llseek(req, 1, os.SEEK_SET) == -errno.ESPIPE
    assert h.llseek(req, 0, os.SEEK_CUR) == -errno.EINVAL
    assert h.llseek(req, 0, os.SEEK_HOLE) == -errno.EINVAL
    assert h.seq == k.printk.first_seq()  # refused seeks move nothing
    assert h.llseek(req, 0, os.SEEK_END) == 0 and h.seq == k.printk.next_seq
    k.printk.clear_seq = k.printk.next_seq - 1
    assert h.llseek(req, 0, os.SEEK_DATA) == 0 and h.seq == k.printk.clear_seq
    assert h.llseek(req, 0, os.SEEK_SET) == 0 and h.seq == k.printk.first_seq() == 0


def test_kmsg_reader_at_seek_end_waits_for_a_new_record(mnt):
    kmsg = f"{mnt}/dev/kmsg"
    fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.lseek(fd, 0, os.SEEK_END)  # what sysio k does (procfs transcript): seek, log, read
        sh(f"echo PROBE-1 > {kmsg}")
        with pytest.raises(OSError) as exc:
            os.read(fd, 8)  # too small: EINVAL, and the record is gone for this reader
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
        sh(f"echo PROBE-2 > {kmsg}")
        assert re.fullmatch(rb"12,\d+,\d+,-;PROBE-2\n", os.read(fd, 4096))
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
        os.lseek(fd, 1, os.SEEK_SET)  # devkmsg_llseek refuses it: the reader stays put
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
        os.lseek(fd, 0, os.SEEK_SET)  # back to the first record: the boot banner
        assert re.fullmatch(rb"5,0,0,-;Linux version .*\n", os.read(fd, 4096))
        os.lseek(fd, 0, os.SEEK_END)
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
        sh(f"echo PROBE-3 > {kmsg}")
        assert os.read(fd, 4096).endswith(b";PROBE-3\n")
    finally:
        os.close(fd)
