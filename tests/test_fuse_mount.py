"""Through a real FUSE mount with real cat, echo, stat and bash."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from livefs.tools import tools_dir

from conftest import sh

SHIMS = tools_dir()
LP = "test_klp_livepatch"


def shim_env(mnt: Path) -> dict:
    return {"LIVEFS_ROOT": str(mnt), "PATH": f"{SHIMS}:{os.environ['PATH']}"}


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    out = tmp_path / "test_modules"
    r = sh(f"livefs modules export {out}")
    assert r.returncode == 0, r.stderr
    return out


def insmod(mnt: Path, modules: Path, name: str, args: str = "") -> None:
    r = sh(f"insmod {modules}/{name}.ko {args}", env=shim_env(mnt))
    assert r.returncode == 0 and r.stdout == r.stderr == "", (r.stdout, r.stderr)


def test_tree_modes_values_and_links(mnt, modules):
    insmod(mnt, modules, LP)
    lp = f"{mnt}/sys/kernel/livepatch/{LP}"
    r = sh(f"stat -c '%A %s %h %U:%G %n' {lp} {lp}/enabled {lp}/transition {lp}/force {lp}/replace "
           f"{lp}/stack_order {lp}/vmlinux {lp}/vmlinux/patched {lp}/vmlinux/cmdline_proc_show,1 "
           f"{mnt}/sys/kernel/livepatch")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"drwxr-xr-x 0 3 root:root {lp}",
        f"-rw-r--r-- 4096 1 root:root {lp}/enabled",
        f"-r--r--r-- 4096 1 root:root {lp}/transition",
        f"--w------- 4096 1 root:root {lp}/force",
        f"-r--r--r-- 4096 1 root:root {lp}/replace",
        f"-r--r--r-- 4096 1 root:root {lp}/stack_order",
        f"drwxr-xr-x 0 3 root:root {lp}/vmlinux",
        f"-r--r--r-- 4096 1 root:root {lp}/vmlinux/patched",
        f"drwxr-xr-x 0 2 root:root {lp}/vmlinux/cmdline_proc_show,1",
        f"drwxr-xr-x 0 3 root:root {mnt}/sys/kernel/livepatch",
    ]
    r = sh(f"cd {lp} && for f in enabled transition replace stack_order vmlinux/patched; do cat $f; done")
    assert r.stdout == "1\n0\n0\n1\n1\n"
    assert Path(f"{lp}/enabled").read_bytes() == b"1\n"
    r = sh(f"cat {mnt}/proc/cmdline")
    assert r.stdout == "test_klp_livepatch: this has been live patched\n"
    r = sh(f"stat -c '%A' {mnt}/sys/module/{LP}/refcnt; cat {mnt}/sys/module/{LP}/refcnt "
           f"{mnt}/sys/module/{LP}/taint; ls {mnt}/sys/module/{LP}")
    assert r.stdout == ("-r--r--r--\n1\nOEK\ncoresize\nholders\ninitsize\ninitstate\nnotes\nrefcnt\nsections\ntaint\n"
                        "uevent\n")


def test_bad_writes_give_kernel_errno_and_change_nothing(mnt, modules):
    insmod(mnt, modules, LP)
    lp = f"{mnt}/sys/kernel/livepatch/{LP}"
    for value in ("2", "-1", "abc", "' 1'", "1", "y", "yes"):
        r = sh(f"echo {value} > {lp}/enabled")
        assert r.returncode == 1
        assert r.stderr == "bash: line 1: echo: write error: Invalid argument\n"
    for value in ("1", "2", "abc"):
        r = sh(f"echo {value} > {lp}/force")
        assert r.stderr == "bash: line 1: echo: write error: Invalid argument\n"
    assert sh(f"echo 0 > {lp}/force").returncode == 0
    for attr in ("transition", "replace", "stack_order", "vmlinux/patched"):
        r = sh(f"echo 1 > {lp}/{attr}")
        assert r.stderr == f"bash: line 1: {lp}/{attr}: Permission denied\n"
    r = sh(f"cat {lp}/force")
    assert r.stderr == f"cat: {lp}/force: Permission denied\n"
    with pytest.raises(PermissionError):
        open(f"{lp}/transition", "w")
    fd = os.open(f"{lp}/enabled", os.O_WRONLY)
    assert os.write(fd, b"") == 0
    with pytest.raises(OSError) as exc:
        os.write(fd, b"2")
    assert exc.value.errno == errno.EINVAL
    os.close(fd)
    r = sh(f"echo 1 > {mnt}/proc/sys/kernel/ftrace_enabled; echo 0 > {mnt}/proc/sys/kernel/ftrace_enabled;"
           f"echo x > {mnt}/proc/sys/kernel/ftrace_enabled")
    assert r.stderr == ("bash: line 1: echo: write error: Device or resource busy\n"
                        "bash: line 1: echo: write error: Invalid argument\n")
    r = sh(f"echo 5 > {mnt}/sys/module/test_klp_livepatch/refcnt")
    assert "Permission denied" in r.stderr
    r = sh(f"touch {lp}/new; mkdir {lp}/d; rm {lp}/enabled; rmdir {lp}/vmlinux; mv {lp}/enabled {lp}/x")
    assert r.stderr.splitlines() == [
        f"touch: cannot touch '{lp}/new': Permission denied",
        f"mkdir: cannot create directory '{lp}/d': Operation not permitted",
        f"rm: cannot remove '{lp}/enabled': Operation not permitted",
        f"rmdir: failed to remove '{lp}/vmlinux': Operation not permitted",
        f"mv: cannot move '{lp}/enabled' to '{lp}/x': Operation not permitted",
    ]
    r = sh(f"cat {lp}/enabled {lp}/transition {mnt}/sys/module/{LP}/refcnt {mnt}/proc/sys/kernel/ftrace_enabled")
    assert r.stdout == "1\n0\n1\n1\n"
    r = sh(f"echo 1 > {mnt}/sys/kernel/livepatch/nonexistent/enabled")
    assert r.stderr == f"bash: line 1: {mnt}/sys/kernel/livepatch/nonexistent/enabled: No such file or directory\n"


def test_disable_removes_directory_at_once_and_rmmod(mnt, modules):
    insmod(mnt, modules, LP)
    lp = f"{mnt}/sys/kernel/livepatch/{LP}"
    r = sh(f"echo 0 > {lp}/enabled; [[ -e {lp} ]] && echo present || echo gone; cat {mnt}/proc/cmdline; "
           f"cat {mnt}/sys/module/{LP}/refcnt; rmmod {LP}; [[ -e {mnt}/sys/module/{LP} ]] || echo unloaded",
           env=shim_env(mnt))
    assert r.stdout.splitlines()[0] == "gone"
    assert "live patched" not in r.stdout.splitlines()[1]
    assert r.stdout.splitlines()[2:] == ["0", "unloaded"]
    assert r.stderr == ""


def test_module_tool_errors(mnt, modules, tmp_path):
    insmod(mnt, modules, LP)
    env = shim_env(mnt)
    r = sh(f"insmod {modules}/{LP}.ko", env=env)
    assert (r.returncode, r.stderr) == (1, f"insmod: ERROR: could not insert module {modules}/{LP}.ko: File exists\n")
    r = sh(f"rmmod {LP}", env=env)
    assert (r.returncode, r.stderr) == (1, f"rmmod: ERROR: Module {LP} is in use\n")
    r = sh("rmmod test_klp_syscall", env=env)
    assert r.stderr == "rmmod: ERROR: Module test_klp_syscall is not currently loaded\n"
    bad = tmp_path / "bad.ko"
    bad.write_bytes(b"\x7fELF garbage")
    r = sh(f"insmod {bad}", env=env)
    assert r.stderr == f"insmod: ERROR: could not insert module {bad}: Invalid module format\n"
    r = sh(f"insmod {tmp_path}/missing.ko", env=env)
    assert r.stderr == f"insmod: ERROR: could not load module {tmp_path}/missing.ko: No such file or directory\n"
    r = sh(f"insmod {modules}/test_klp_atomic_replace.ko replace=abc", env=env)
    assert r.stderr.endswith("test_klp_atomic_replace.ko: Invalid parameters\n")
    r = sh(f"modinfo {modules}/{LP}.ko", env=env)
    assert re.search(r"^livepatch:      Y$", r.stdout, re.M) and r.stdout.startswith("filename:       /")
    r = sh("lsmod", env=env)
    assert r.stdout.splitlines()[0] == "Module                  Size  Used by"
    assert re.match(rf"^{LP} +16384  1$", r.stdout.splitlines()[1])


def test_callback_params_and_object_patched(mnt, modules):
    insmod(mnt, modules, "test_klp_callbacks_demo")
    base = f"{mnt}/sys/kernel/livepatch/test_klp_callbacks_demo"
    param = f"{mnt}/sys/module/test_klp_callbacks_demo/parameters/pre_patch_ret"
    r = sh(f"stat -c %A {param}; cat {param}; echo -5 > {param}; cat {param}; echo z > {param}; cat {param}; "
           f"cat {base}/test_klp_callbacks_mod/patched; ls {base}; ls {base}/test_klp_callbacks_busy")
    assert r.stdout.splitlines() == ["-rw-r--r--", "0", "-5", "-5", "0", "enabled", "force", "replace",
                                     "stack_order", "test_klp_callbacks_busy", "test_klp_callbacks_mod",
                                     "transition", "vmlinux", "busymod_work_func,1", "patched"]
    assert r.stderr == "bash: line 1: echo: write error: Invalid argument\n"
    # the pre_patch callback returns the parameter: -5 refuses the target module
    r = sh(f"insmod {modules}/test_klp_callbacks_mod.ko", env=shim_env(mnt))
    assert r.stderr.endswith("test_klp_callbacks_mod.ko: Input/output error\n")
    assert sh(f"echo 0 > {param}").returncode == 0
    insmod(mnt, modules, "test_klp_callbacks_mod")
    assert Path(f"{base}/test_klp_callbacks_mod/patched").read_text() == "1\n"


def test_kmsg_records_and_dmesg(mnt):
    kmsg = f"{mnt}/dev/kmsg"
    r = sh(f"echo 'hello from test' > {kmsg}; echo '<3>an error' > {kmsg}")
    assert r.returncode == 0
    fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    records = []
    try:
        while True:
            try:
                records.append(os.read(fd, 8192))
            except BlockingIOError:
                break
        with pytest.raises(OSError) as exc:
            os.read(fd, 1)
        assert exc.value.errno in (errno.EAGAIN, errno.EINVAL)
    finally:
        os.close(fd)
    assert re.fullmatch(rb"12,\d+,\d+,-;hello from test\n", records[-2])
    assert re.fullmatch(rb"11,\d+,\d+,-;an error\n", records[-1])
    seqs = [int(r.split(b",")[1]) for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    r = sh("dmesg | tail -2", env=shim_env(mnt))
    assert re.fullmatch(r"\[ *\d+\.\d{6}\] hello from test\n\[ *\d+\.\d{6}\] an error\n", r.stdout)


def test_kmsg_blocking_read_wakes_on_new_record(mnt):
    import subprocess
    import time
    reader = subprocess.Popen(["bash", "-c", f"exec 3<{mnt}/dev/kmsg; while read -r -u 3 l; do "
                               f"case $l in *wake-up-marker*) echo got; exit 0;; esac; done"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    sh(f"echo wake-up-marker > {mnt}/dev/kmsg")
    out, _ = reader.communicate(timeout=10)
    assert out == "got\n"


def test_dynamic_debug_control(mnt, modules):
    ctl = f"{mnt}/sys/kernel/debug/dynamic_debug/control"
    r = sh(f"grep '^kernel/livepatch' {ctl} | awk -F'[: ]' '{{print \"file \" $1 \" line \" $2 \" \" $4}}'")
    assert "file kernel/livepatch/transition.c line" in r.stdout and r.stdout.split("\n")[0].endswith(" =_")
    assert sh(f"printf 'file kernel/livepatch/* +p\\nfunc klp_try_switch_task -p\\n' > {ctl}").returncode == 0
    r = sh(f"grep -c '=p' {ctl}; echo 'bogus words here' > {ctl}")
    assert r.stdout == "4\n" and "Invalid argument" in r.stderr
    insmod(mnt, modules, LP)
    r = sh("dmesg --notime | grep livepatch: | tail -4", env=shim_env(mnt))
    assert r.stdout.splitlines() == [f"livepatch: enabling patch '{LP}'",
                                     f"livepatch: '{LP}': initializing patching transition",
                                     f"livepatch: '{LP}': starting patching transition",
                                     f"livepatch: '{LP}': completing patching transition"][1:] + \
        [f"livepatch: '{LP}': patching complete"]


def test_proc_self_and_patch_state(mnt):
    r = sh(f"cat {mnt}/proc/self/patch_state; stat -c %A {mnt}/proc/self/patch_state; "
           f"cat {mnt}/proc/1/comm; readlink {mnt}/proc/self")
    lines = r.stdout.splitlines()
    assert lines[:3] == ["-1", "-r--------", "systemd"]
    assert lines[3].isdigit()


def test_idle_cpu_delays_completion_to_the_retry(require_fuse, tmp_path, modules):
    target = tmp_path / "smp"
    target.mkdir()
    assert sh(f"livefs mount --cpus 2 {target}").returncode == 0
    try:
        lp = f"{target}/sys/kernel/livepatch/{LP}"
        r = sh(f"insmod {modules}/{LP}.ko && cat {lp}/transition && sleep 2.6 && cat {lp}/transition",
               env=shim_env(target))
        assert r.stdout == "1\n0\n", r.stderr
    finally:
        sh(f"livefs umount {target}")


def test_kernel_version_612_hides_stack_order(require_fuse, tmp_path, modules):
    target = tmp_path / "m612"
    target.mkdir()
    assert sh(f"livefs mount --cpus 1 --kernel-version 6.12 {target}").returncode == 0
    try:
        insmod(target, modules, LP)
        r = sh(f"ls {target}/sys/kernel/livepatch/{LP}; cat {target}/sys/kernel/livepatch/{LP}/stack_order")
        assert r.stdout == "enabled\nforce\nreplace\ntransition\nvmlinux\n"
        assert "No such file or directory" in r.stderr
    finally:
        sh(f"livefs umount {target}")


def test_livefs_status_shows_the_blocking_task(mnt, modules):
    r = sh(f"echo 'spawn kthread stuck cmdline_proc_show' > {mnt}/sys/kernel/debug/livefs/tasks")
    assert r.returncode == 0
    insmod(mnt, modules, LP)
    r = sh(f"livefs status --mount {mnt}")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^{LP} +1 +1 +1 +0 +0  vmlinux$", r.stdout, re.M)
    assert "transition: 'test_klp_livepatch' to patched" in r.stdout
    assert re.search(r"^ +\d+ stuck +sleeping +sleeping on function cmdline_proc_show +cmdline_proc_show$",
                     r.stdout, re.M)
    r = sh(f"livefs status --mount {mnt}/nowhere")
    assert r.returncode == 1 and "no livefs mount found" in r.stderr
