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

