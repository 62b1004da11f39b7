"""Module syscalls of ``livefs run``'s command reach the model (issue 14's
first part, livefs/runtime/modsyscalls.py): kmod's own tools by full path, and
a program of ours that makes the syscalls itself, with the kernel's errno."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import livefs_cli

HERE = Path(__file__).parent


def _host_modules() -> str | None:
    try:
        return Path("/proc/modules").read_text()
    except OSError:
        return None


def _kmod_tool(name: str) -> str:
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if Path(d, name).exists():
            return f"{d}/{name}"
    pytest.fail(f"kmod's {name} is not installed (Debian: apt-get install kmod)")


@pytest.fixture
def workdir(require_fuse, tmp_path: Path) -> Path:
    assert livefs_cli("modules", "export", str(tmp_path / "m"), "test_klp_livepatch").returncode == 0
    return tmp_path


def run(workdir: Path, script: str) -> subprocess.CompletedProcess:
    return livefs_cli("run", "--cpus", "1", "--verbose", "--", "bash", "-c", script, cwd=workdir, timeout=120)


def test_kmod_tools_by_full_path_load_into_the_model(workdir: Path) -> None:
    host = _host_modules()
    insmod, rmmod = _kmod_tool("insmod"), _kmod_tool("rmmod")
    lp = "/sys/kernel/livepatch/test_klp_livepatch"
    r = run(workdir, f"""
        {insmod} m/test_klp_livepatch.ko; echo "insmod $?"
        cat {lp}/enabled
        {insmod} m/test_klp_livepatch.ko; echo "again $?"
        {rmmod} test_klp_livepatch; echo "busy $?"
        echo 0 > {lp}/enabled
        {rmmod} test_klp_livepatch; echo "rmmod $?"
        [[ -e /sys/module/test_klp_livepatch ]] || echo gone
        {rmmod} test_klp_livepatch; echo "twice $?"
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["insmod 0", "1", "again 1", "busy 1", "rmmod 0", "gone", "twice 1"]
    # kmod's own words, with the model's errno
    assert "insmod: ERROR: could not insert module m/test_klp_livepatch.ko: File exists" in r.stderr
    assert "rmmod: ERROR: Module test_klp_livepatch is in use" in r.stderr
    assert "rmmod: ERROR: Module test_klp_livepatch is not currently loaded" in r.stderr
    assert "livefs run: module syscalls go to the model (seccomp user notification)" in r.stderr
    assert _host_modules() == host


def test_a_program_making_the_syscalls_gets_the_kernels_errno(workdir: Path) -> None:
    cc = shutil.which("cc") or pytest.fail("a C compiler is needed (Debian: apt-get install gcc)")
    subprocess.run([cc, "-O", "-o", str(workdir / "modcall"), str(HERE / "helpers/modcall.c")], check=True)
    (workdir / "junk.ko").write_bytes(bytes(range(256)) * 4)
    (workdir / "empty.ko").write_bytes(b"")
    host = _host_modules()
    r = run(workdir, """
        ./modcall finit m/test_klp_livepatch.ko ""
        ./modcall finit m/test_klp_livepatch.ko ""
        ./modcall delete test_klp_livepatch
        echo 0 > /sys/kernel/livepatch/test_klp_livepatch/enabled
        ./modcall delete test_klp_livepatch
        ./modcall delete test_klp_livepatch
        ./modcall init m/test_klp_livepatch.ko ""
        echo 0 > /sys/kernel/livepatch/test_klp_livepatch/enabled
        ./modcall delete test_klp_livepatch
        ./modcall finit junk.ko ""
        ./modcall init junk.ko ""
        ./modcall finit empty.ko ""
        ./modcall finit /dev/null ""
        ./modcall finit m/test_klp_livepatch.ko "bogus=1"
        dmesg | grep -c "unknown parameter 'bogus' ignored"
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "0 0",            # finit_module: loaded
        "-1 EEXIST",      # again
        "-1 EAGAIN",      # delete_module(O_NONBLOCK) of a module in use: EWOULDBLOCK
        "0 0",            # disabled: removed
        "-1 ENOENT",      # not loaded
        "0 0",            # init_module from memory
        "0 0",
        "-1 ENOEXEC",     # not an ELF module
        "-1 ENOEXEC",
        "-1 EINVAL",      # kernel_read_file(): nothing to read
        "-1 EINVAL",      # not a regular file
        "0 0",            # an unknown parameter is ignored, with a warning
        "1",
    ]
    assert _host_modules() == host


def _host_log_head() -> str:
    r = subprocess.run(["dmesg"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else r.stderr


def test_util_linux_dmesg_reads_and_clears_the_models_log(workdir: Path) -> None:
    """The real dmesg: through /dev/kmsg (with its SEEK_DATA after a clear),
    and through syslog(2) for -S, -c and -C, which clear the model's log and
    never the host's."""
    dmesg = _kmod_tool("dmesg")
    host = _host_log_head()
    r = run(workdir, f"""
        echo first > /dev/kmsg
        {dmesg} | tail -1
        {dmesg} -r | tail -1
        {dmesg} -x | tail -1
        {dmesg} -S | tail -1
        {dmesg} -c | tail -1
        echo "after -c: $({dmesg} | wc -l) $({dmesg} -S | wc -l)"
        echo second > /dev/kmsg
        {dmesg} --notime
        {dmesg} -C
        echo "after -C: $({dmesg} | wc -l)"
        timeout 2 {dmesg} -w --notime & sleep 0.7; echo third > /dev/kmsg; wait
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("] first") and lines[0].startswith("[")
    # <12> (LOG_USER | LOG_WARNING); util-linux before 2.39 prints it as <5> (its LOG_MAKEPRI bug)
    assert lines[1].split("[")[0] in ("<12>", "<5>") and lines[1].endswith("] first")
    assert lines[2].startswith("user  :warn  : [") and lines[2].endswith("] first")
    assert lines[3].endswith("] first") and lines[4].endswith("] first")
    assert lines[5:] == ["after -c: 0 0", "second", "after -C: 0", "third"]
    assert _host_log_head() == host


def test_modprobe_finds_the_catalog_by_name(workdir: Path) -> None:
    """/lib/modules/$(uname -r) of the run holds the catalog's stand-ins with
    depmod's indexes: kmod's modprobe and modinfo work by module name."""
    modprobe, modinfo = _kmod_tool("modprobe"), _kmod_tool("modinfo")
    host = _host_modules()
    lp = "/sys/kernel/livepatch/test_klp_livepatch"
    r = run(workdir, f"""
        {modprobe} test_klp_livepatch; echo "modprobe $?"
        cat {lp}/enabled
        {modprobe} -r test_klp_livepatch; echo "busy $?"
        echo 0 > {lp}/enabled
        {modprobe} -r test_klp_livepatch; echo "removed $?"
        [[ -e /sys/module/test_klp_livepatch ]] || echo gone
        {modprobe} no_such_module; echo "unknown $?"
        {modinfo} -F livepatch test_klp_livepatch
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["modprobe 0", "1", "busy 1", "removed 0", "gone", "unknown 1", "Y"]
    assert "modprobe: FATAL: Module test_klp_livepatch is in use." in r.stderr
    assert "modprobe: FATAL: Module no_such_module not found in directory /lib/modules/" in r.stderr
    assert _host_modules() == host
    assert not Path(f"/lib/modules/{os.uname().release}/extra/test_klp_livepatch.ko").exists()


def test_a_patched_getpid_switches_each_caller_at_its_own_kernel_exit(workdir: Path) -> None:
    """test_klp_syscall patches getpid: compiled callers of getpid (nothing
    of ours in them) each switch at their own kernel exit, so the patch counts
    every one of them, and getpid still returns each caller's pid; unpatched,
    getpid is the host's."""
    cc = shutil.which("cc") or pytest.fail("a C compiler is needed (Debian: apt-get install gcc)")
    subprocess.run([cc, "-O", "-o", str(workdir / "callgetpid"), str(HERE / "helpers/callgetpid.c")], check=True)
    assert livefs_cli("modules", "export", str(workdir / "m"), "test_klp_syscall").returncode == 0
    lp = "/sys/kernel/livepatch/test_klp_syscall"
    r = livefs_cli("run", "--cpus", "2", "--fast-forward", "--", "bash", "-c", f"""
        for i in 1 2 3; do ./callgetpid > out.$i & pids[$i]=$!; done
        insmod m/test_klp_syscall.ko klp_pids=$(echo ${{pids[@]}} | tr ' ' ',')
        for i in $(seq 100); do [[ $(cat /sys/kernel/test_klp_syscall/npids) == 0 ]] && break; sleep 0.1; done
        echo "npids $(cat /sys/kernel/test_klp_syscall/npids)"
        while [[ $(cat {lp}/transition) == 1 ]]; do sleep 0.1; done
        cat {lp}/enabled
        kill ${{pids[@]}}; wait
        for i in 1 2 3; do [[ $(cat out.$i) == ${{pids[$i]}} ]] && echo "pid $i ok"; done
        echo 0 > {lp}/enabled
        while [[ -e {lp} ]]; do sleep 0.1; done
        rmmod test_klp_syscall && echo removed
        ./callgetpid > out.4 & p=$!; sleep 0.2; kill $p; wait; [[ $(cat out.4) == $p ]] && echo "unpatched ok"
    """, cwd=workdir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["npids 0", "1", "pid 1 ok", "pid 2 ok", "pid 3 ok", "removed", "unpatched ok"]


POLL_KMSG = r"""
import os, select, subprocess, sys, time
fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
while True:  # read to the end, as a log reader does before it waits
    try:
        os.read(fd, 8192)
    except BlockingIOError:
        break
p = select.poll()
p.register(fd, select.POLLIN)
print("at the end:", p.poll(200))
subprocess.Popen(["bash", "-c", "sleep 0.3; echo polled > /dev/kmsg"])
print("woken:", p.poll(10_000))
print("record:", os.read(fd, 1000).decode().split(";", 1)[1].strip())
"""


def test_poll_on_dev_kmsg_waits_for_the_next_record(require_fuse, tmp_path: Path) -> None:
    """devkmsg_poll(): nothing to read at the end of the log, and a waiting
    poll(2) is woken by the next record."""
    r = livefs_cli("run", "--", sys.executable, "-c", POLL_KMSG, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["at the end: []", "woken: [(3, 1)]", "record: polled"]
