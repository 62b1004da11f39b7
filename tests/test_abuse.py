"""Abuse: random writes everywhere, malformed definitions, crowds, a killed daemon."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livefs.catalog import find
from livefs.catalog.api import Func, Function, ModuleDef, Object, Param, Patch
from livefs.fs.root import build_root
from livefs.fs.tree import Attr, Dir, Request, SnapshotHandle
from livefs.kernel.kernel import Kernel
from livefs.testing.live import Twin, live_dump

from livefs.tools import tools_dir

from conftest import daemon_pid, sh

KNOWN_ERRNOS = {errno.EINVAL, errno.EBUSY, errno.ENOENT, errno.ESRCH, errno.EPERM, errno.ENOEXEC,
                errno.EEXIST, errno.EWOULDBLOCK, errno.ENODEV, errno.EACCES, errno.EIO}


def _loaded_kernel() -> Kernel:
    k = Kernel(ncpus=1)
    t = k.task_for(800_000, "insmod")
    with k.syscall(t):
        for name, args in (("test_klp_callbacks_demo", ""), ("test_klp_atomic_replace", "replace=0"),
                           ("test_klp_callbacks_busy", "")):
            assert k.load_module(find(name), args) == 0
    return k


def _writable(root: Dir, req: Request, path: str = "") -> list[tuple[str, Attr]]:
    out = []
    for name, node in root.listing(req):
        child = f"{path}/{name}"
        if isinstance(node, Dir) and child not in ("/overlay",):
            out += _writable(node, req, child)
        elif isinstance(node, Attr) and node.store is not None and node.perm & 0o222:
            out.append((child, node))
    return out


def _state(k: Kernel) -> tuple:
    lp = k.livepatch
    return (tuple((p.name, p.enabled, p.forced) for p in lp.sysfs_patches), lp.transition_patch is not None,
            tuple((m.name, m.refcnt, tuple((n, repr(v.value)) for n, v in m.params.items()))
                  for m in k.modules.modules.values()),
            k.ftrace.enabled, k.tracer.current, tuple(f.name for f in k.tracer.filter), k.kprobes.enabled,
            tuple((s.function, s.flags) for s in k.dyndbg.sites), len(k.tasks.tasks))


@settings(max_examples=300, deadline=None)
@given(pick=st.integers(min_value=0), data=st.binary(min_size=1, max_size=300))
def test_random_bytes_to_every_writable_file(pick, data):
    k = _loaded_kernel()
    root = build_root()
    task = k.task_for(800_001, "fuzz")
    req = Request(k, task)
    files = _writable(root, req)
    path, node = files[pick % len(files)]
    before = _state(k)
    with k.syscall(task):
        ret = SnapshotHandle(node, b"").write(req, data)
    assert ret == len(data[:node.store_max]) or -ret in KNOWN_ERRNOS, (path, data, ret)
    if ret < 0:
        assert _state(k) == before, (path, data)


BAD_DEFINITIONS = [
    ModuleDef(name=""),
    ModuleDef(name="has-dash"),
    ModuleDef(name="x" * 80),
    ModuleDef(name="badparam", params=[Param("p", "float")]),
    ModuleDef(name="dupparam", params=[Param("p"), Param("p")]),
    ModuleDef(name="worldwritable", params=[Param("p", perm=0o666)]),
    ModuleDef(name="nopatchflag", patch=Patch(objs=[Object(None, [])])),
    ModuleDef(name="emptypatch", livepatch=True, patch=Patch(objs=[])),
    ModuleDef(name="noold", livepatch=True, patch=Patch(objs=[Object(None, [Func("", lambda c: "")])])),
    ModuleDef(name="notcallable", livepatch=True, patch=Patch(objs=[Object(None, [Func("x", "nope")])])),
    ModuleDef(name="badsympos", livepatch=True,
              patch=Patch(objs=[Object(None, [Func("cmdline_proc_show", lambda c: "", old_sympos=-1)])])),
    ModuleDef(name="badfunction", functions=[Function("f", None)]),
    ModuleDef(name="factory", livepatch=True, patch=lambda ctx: "not a patch"),
]


@pytest.mark.parametrize("defn", BAD_DEFINITIONS, ids=lambda d: d.name or "empty")
def test_malformed_definitions_are_refused_whole(defn):
    k = Kernel(ncpus=1)
    with k.syscall(k.task_for(800_002, "insmod")):
        assert k.load_module(defn) == -errno.EINVAL
    assert k.modules.last_error and "\n" not in k.modules.last_error
    assert not k.modules.modules and not k.livepatch.sysfs_patches


def test_python_errors_in_module_code_leave_nothing_behind():
    k = Kernel(ncpus=1)

    def boom(ctx):
        raise RuntimeError("bug in my init")

    bad_cb = ModuleDef(name="cbbug", livepatch=True, patch=Patch(objs=[Object(None, [Func(
        "cmdline_proc_show", lambda c: "x\n")], callbacks=find("test_klp_callbacks_demo").patch.objs[0].callbacks)]))
    with k.syscall(k.task_for(800_003, "insmod")):
        assert k.load_module(ModuleDef(name="initbug", init=boom)) == -errno.ENOEXEC
        assert k.load_module(bad_cb) < 0  # its callbacks read a parameter it does not have
    assert not k.modules.modules and not k.livepatch.sysfs_patches and k.livepatch.transition_patch is None
    assert any("initbug: init raised RuntimeError: bug in my init" in r.text for r in k.printk.records)


def test_random_writes_through_the_mount(mnt, tmp_path):
    mods = tmp_path / "m"
    assert sh(f"livefs modules export {mods}").returncode == 0
    env = {"LIVEFS_ROOT": str(mnt), "PATH": f"{tools_dir()}:{os.environ['PATH']}"}
    assert sh(f"insmod {mods}/test_klp_callbacks_demo.ko && insmod {mods}/test_klp_livepatch.ko", env=env).returncode == 0
    twin_paths = [p.lstrip("/") for p, _ in _writable(build_root(), Twin().req())]
    files = [mnt / p for p in twin_paths if (mnt / p).exists()] + [
        mnt / "sys/kernel/livepatch/test_klp_livepatch/enabled", mnt / "sys/kernel/livepatch/test_klp_livepatch/force",
        mnt / "sys/module/test_klp_callbacks_demo/parameters/pre_patch_ret"]
    rng = random.Random(1234)
    errors = 0
    for _ in range(300):
        path = rng.choice(files)
        if path.name in ("reboot", "init_module", "delete_module"):
            continue
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        if path.name == "enabled":
            data = b"2" + data  # never a valid value: only refusals here
        before = live_dump(mnt)
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, rng.randint(0, 8192))
            finally:
                os.close(fd)
        except OSError as exc:
            errors += 1
            assert exc.errno in KNOWN_ERRNOS, (path, data, exc)
            assert live_dump(mnt) == before, (path, data)
    assert errors > 50
    assert (mnt / "sys/kernel/livepatch/test_klp_livepatch/enabled").read_text() == "1\n"


def test_crowd_of_readers_and_writers(mnt, tmp_path):
    mods = tmp_path / "m"
    sh(f"livefs modules export {mods} test_klp_livepatch")
    env = {"LIVEFS_ROOT": str(mnt), "PATH": f"{tools_dir()}:{os.environ['PATH']}"}
    assert sh(f"insmod {mods}/test_klp_livepatch.ko", env=env).returncode == 0
    lp = mnt / "sys/kernel/livepatch/test_klp_livepatch"
    loop = (f"end=$((SECONDS+4)); while ((SECONDS < end)); do cat {lp}/enabled {lp}/transition "
            f"{mnt}/proc/cmdline {mnt}/proc/self/patch_state >/dev/null || exit 1; "
            f"echo 0 > {lp}/force || exit 2; echo crowd > {mnt}/dev/kmsg || exit 3; done")
    procs = [subprocess.Popen(["bash", "-c", loop]) for _ in range(12)]
    codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0] * 12
    assert (lp / "enabled").read_text() == "1\n"


def test_killed_daemon_is_cleaned_up_by_umount(require_fuse, tmp_path):
    target = tmp_path / "dead"
    target.mkdir()
    assert sh(f"livefs mount --cpus 1 {target}").returncode == 0
    os.kill(daemon_pid(target), signal.SIGKILL)
    time.sleep(0.3)
    r = sh(f"cat {target}/proc/cmdline")
    assert "Transport endpoint is not connected" in r.stderr or r.returncode != 0
    assert sh(f"livefs umount {target}").returncode == 0
    assert target.resolve().as_posix() not in Path("/proc/self/mounts").read_text()


def test_sigterm_unmounts_cleanly(require_fuse, tmp_path):
    target = tmp_path / "term"
    target.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "livefs", "mount", "--foreground", "--cpus", "1", str(target)])
    deadline = time.monotonic() + 20
    while not (target / "sys").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    reader = subprocess.Popen(["cat", str(target / "dev/kmsg")], stdout=subprocess.DEVNULL)  # blocks
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert reader.wait(timeout=20) is not None  # the blocked cat did not hang
    assert str(target.resolve()) not in Path("/proc/self/mounts").read_text()
