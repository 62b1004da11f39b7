"""Abuse: random writes everywhere, malformed definitions, crowds, a killed daemon."""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livefs.catalog import find
from livefs.catalog.api import Func, Function, ModuleDef, Object, Param, Patch
from livefs.fs.root import build_root
from livefs.fs.tree import Attr, Dir, Request, SnapshotHandle, resolve
from livefs.kernel.kernel import Kernel
from livefs.testing.live import Twin, live_dump

from livefs.tools import tools_dir

from conftest import daemon_pid, mounted_at, sh

# a stopped daemon unmounts at once (about 0.1 s here); generous for a loaded CI machine
STOP_BOUND_S = 5.0
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
            tuple((s.function, s.flags) for s in k.dyndbg.sites), len(k.tasks.tasks), k.modules.tainted,
            k.printk.clear_seq, k.tracer.tracing_on, k.reboot_requested)


# what a refused write must leave as it was, read through the tree
DUMPED = ("sys/kernel/livepatch", "sys/module", "proc/sys/kernel", "sys/kernel/debug/livefs",
          "sys/kernel/debug/dynamic_debug", "sys/kernel/debug/kprobes", "sys/kernel/tracing")


# the kernel's log, seen as syslog(2) sees it: a refusal may log, as the kernel's do
LOG_VIEWS = ("sys/kernel/debug/livefs/syslog",)


def _dump(root: Dir, req: Request) -> dict[str, bytes | str]:
    """Every readable file under DUMPED and every task's comm, as read now."""
    out: dict[str, bytes | str] = {}

    def walk(path: str, node) -> None:
        if path in LOG_VIEWS:
            return
        if isinstance(node, Dir):
            out[path] = "dir"
            for name, child in node.listing(req):
                walk(f"{path}/{name}", child)
        elif isinstance(node, Attr) and node.show is not None and node.perm & 0o444:
            out[path] = node.open(req, os.O_RDONLY).read(req, 1 << 20, 0)
        elif isinstance(node, Attr):
            out[path] = f"mode {node.perm:o}"

    for top in DUMPED + tuple(f"proc/{pid}/comm" for pid in sorted(req.kernel.tasks.tasks)):
        walk(top, resolve(root, req, top))
    return out


# -- the kernel's parsers, written out here so the oracle does not borrow the model's ------------------

def _kstrtobool(data: bytes) -> bool | None:
    """kstrtobool(): the first character decides ("on"/"of" the first two)."""
    if data[:1] in (b"y", b"Y", b"t", b"T", b"1"):
        return True
    if data[:1] in (b"n", b"N", b"f", b"F", b"0"):
        return False
    return {b"on": True, b"of": False}.get(data[:2].lower())


def _kstrtoint(data: bytes) -> int | None:
    """kstrtoint(s, 0): an optional sign, a 0x/0 base prefix, digits, at most
    one trailing newline; no leading blanks, nothing else."""
    m = re.fullmatch(rb"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\n?", data)
    if m is None:
        return None
    digits = m.group(2)
    base = 16 if digits[:2].lower() == b"0x" else 8 if digits.startswith(b"0") and len(digits) > 1 else 10
    value = int(digits, base) * (-1 if m.group(1) == b"-" else 1)
    return value if -2**31 <= value < 2**31 else None


def _dointvec(data: bytes) -> int | None:
    """proc_dointvec() for one value (kernel/sysctl.c proc_get_long): blanks,
    an optional '-', a base-0 number (0x hex, 0 octal) of under 21 characters
    in int range, then the end or a blank and anything."""
    m = re.fullmatch(rb"[ \t\n\v\f\r]*(-?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?:[ \t\n].*)?", data, re.DOTALL)
    if m is None or len(m.group(1) + m.group(2)) >= 21:
        return None
    digits = m.group(2)
    value = int(digits, 16 if digits[:2].lower() == b"0x" else 8 if digits.startswith(b"0") else 10)
    value = -value if m.group(1) else value
    return value if -2**31 <= value < 2**31 else None


def _kstrtoul10(data: bytes) -> int | None:
    """kstrtoul_from_user(.., 10, ..): '+'?, decimal digits, one newline at most."""
    m = re.fullmatch(rb"\+?([0-9]+)\n?", data[:23])
    return int(m.group(1)) if m and int(m.group(1)) < 2**64 else None


def _doulong(data: bytes) -> int | None:
    """proc_doulongvec_minmax() for one value: C's strtoul with base 0 (0x
    hex, 0 octal), blanks around it, no sign."""
    m = re.fullmatch(rb"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*", data)
    if m is None:
        return None
    digits = m.group(1)
    return int(digits, 16 if digits[:2].lower() == b"0x" else 8 if digits.startswith(b"0") else 10)


@attrs.define
class Write:
    """One write and what the oracle needs of the world before it."""

    path: str
    data: bytes
    before: tuple
    tree: dict[str, bytes | str]
    next_seq: int
    writer: int

    def read_back(self, k: Kernel, root: Dir, req: Request) -> bytes:
        node = resolve(root, req, self.path.lstrip("/"))
        return node.open(req, os.O_RDONLY).read(req, 1 << 20, 0)


def _predict_success(w: Write, k: Kernel, root: Dir, req: Request) -> None:
    """Assert what the kernel's store makes of ``w.data``, file by file."""
    name = w.path.rsplit("/", 1)[1]
    unchanged = _dump(root, req) == w.tree and _state(k) == w.before
    if name == "comm":
        assert w.path.startswith(f"/proc/{w.writer}/"), "only a process's own comm may be written"
        assert w.read_back(k, root, req) == w.data[:15].split(b"\0", 1)[0] + b"\n"
    elif name == "kmsg_clear_seq":
        assert w.read_back(k, root, req) == f"{w.next_seq}\n".encode()
    elif name in ("trace", "init_module"):
        assert unchanged  # a write to trace is a stub; a partial module record is only gathered
    elif name == "ftrace_enabled":  # the int as written (nothing here is PERMANENT)
        value = _dointvec(w.data)
        assert value is not None
        assert w.read_back(k, root, req) == f"{value}\n".encode()
    elif name == "tracing_on":
        value = _kstrtoul10(w.data)
        assert value is not None
        assert w.read_back(k, root, req) == f"{int(value != 0)}\n".encode()
    elif name == "tainted":
        value, old = _doulong(w.data), w.before[9]
        assert value is not None
        new = k.modules.tainted
        known = (1 << 19) - 1  # TAINT_PROPRIETARY_MODULE .. TAINT_TEST: every kernel has these
        assert new & old == old and new & ~(old | value) == 0 and new & value & known == value & known
    elif name == "enabled" and "/kernel/debug/" in w.path:  # kprobes/enabled
        value = _kstrtobool(w.data)
        assert value is not None and k.kprobes.enabled is value
    elif name == "enabled":
        assert _kstrtobool(w.data) is False  # every patch here is enabled: only a disable is valid
        patch = w.path.split("/")[4]
        assert patch not in [p.name for p in k.livepatch.sysfs_patches]  # nothing blocks: gone at once
    elif name == "force":
        assert _kstrtobool(w.data) is False and unchanged  # no transition to force
    elif name in ("pre_patch_ret", "replace"):
        value = _kstrtoint(w.data)
        assert value is not None and w.read_back(k, root, req) == f"{value}\n".encode()
    elif name == "block_transition":
        value = _kstrtobool(w.data)
        assert value is not None and w.read_back(k, root, req) == (b"Y\n" if value else b"N\n")
    elif name == "current_tracer":
        assert w.data.strip() in (b"nop", b"function")
        assert w.read_back(k, root, req) == w.data.strip() + b"\n"
    elif name == "control":
        # ddebug_exec_queries(): blank and comment-only lines are no query; a
        # query of flags alone matches every site
        queries = [q for q in (q.split(b"#", 1)[0].strip() for q in re.split(rb"[;\n]", w.data)) if q]
        assert all(re.fullmatch(rb"[-+]p", q) for q in queries), f"no prediction for the query {w.data!r}"
        if queries:
            assert {"p" in s.flags for s in k.dyndbg.sites} == {queries[-1] == b"+p"}
        else:
            assert unchanged
    elif name == "reboot":
        assert w.data.strip() == b"1" and k.reboot_requested
    else:  # tasks, set_ftrace_filter, delete_module: random bytes are never a valid command
        raise AssertionError(f"no prediction for a successful write to {w.path}")


INTERESTING = [b"0", b"1", b"1\n", b"y", b"N", b"on", b"of", b" 5", b"0x10", b"-3\n", b"010", b"+7", b"2",
               b"nop", b"function\n", b"+p", b"-p\n", b"#\n", b"abc", b"1\n\n", b"99999999999", b"1_0",
               b"0x-5", b"\x80abc"]


@settings(max_examples=300, deadline=None)
@given(pick=st.integers(min_value=0),
       data=st.one_of(st.binary(min_size=1, max_size=300), st.sampled_from(INTERESTING)))
def test_random_bytes_to_every_writable_file(pick, data):
    """Any bytes to any writable file: a refusal with a kernel errno changes
    nothing in the tree or the model; a success does exactly what the
    kernel's store makes of those bytes (file by file, _predict_success)."""
    k = _loaded_kernel()
    root = build_root()
    task = k.task_for(800_001, "fuzz")
    req = Request(k, task)
    files = _writable(root, req)
    path, node = files[pick % len(files)]
    with k.syscall(task):
        w = Write(path, data, _state(k), _dump(root, req), k.printk.next_seq, task.pid)
    with k.syscall(task):
        ret = SnapshotHandle(node, b"").write(req, data)
    assert ret == len(data[:node.store_max]) or -ret in KNOWN_ERRNOS, (path, data, ret)
    with k.syscall(task):
        if ret < 0:
            assert _state(k) == w.before, (path, data)
            assert _dump(root, req) == w.tree, (path, data)
        else:
            _predict_success(w, k, root, req)


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
    assert mounted_at(target.resolve()) == []


def test_sigterm_unmounts_cleanly(require_fuse, tmp_path):
    """SIGTERM to a foreground daemon: it exits 0 at once (libfuse's handler
    unmounts and ends the loop), a reader blocked in /dev/kmsg fails at once
    (cat's exit 1, the connection aborted) rather than hanging or reading
    on, and the mount point has no entry left in the mount table."""
    target = (tmp_path / "term").resolve()
    target.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "livefs", "mount", "--foreground", "--cpus", "1", str(target)])
    deadline = time.monotonic() + 20
    while not (target / "sys").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m[2] for m in mounted_at(target)] == ["fuse.livefs"]
    reader = subprocess.Popen(["cat", str(target / "dev/kmsg")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    assert reader.poll() is None, "cat /dev/kmsg should block at the end of the log"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert reader.wait(timeout=20) == 1, reader.stderr.read()
    took = time.monotonic() - sent
    assert took < STOP_BOUND_S, f"SIGTERM took {took:.1f} s to end the daemon and the reader"
    assert mounted_at(target) == []
