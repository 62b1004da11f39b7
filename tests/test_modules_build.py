"""User modules as ELF stand-ins: build, inspect with real tools, load, refuse."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import livefs.examples

from livefs.tools import tools_dir

from conftest import sh

EXAMPLE = Path(livefs.examples.__file__).parent / "greeting_fix.py"
SHIMS = tools_dir()


def real_tool(name: str) -> str:
    for path in (f"/usr/sbin/{name}", f"/sbin/{name}", shutil.which(name) or ""):
        if path and os.access(path, os.X_OK) and not path.startswith(str(SHIMS)):
            return path
    pytest.fail(f"{name} is not installed (bootstrap installs kmod and binutils)")


@pytest.fixture
def built(tmp_path: Path) -> Path:
    for name in ("greeting", "greeting_fix"):
        r = sh(f"livefs modules build {EXAMPLE} --name {name} -o {tmp_path}/{name}.ko")
        assert r.returncode == 0, r.stderr
    return tmp_path


def test_real_modinfo_and_readelf_read_the_stand_in(built):
    r = sh(f"{real_tool('modinfo')} {built}/greeting_fix.ko")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"filename:       {built}/greeting_fix.ko"
    assert "livepatch:      Y" in lines and "name:           greeting_fix" in lines
    assert "parm:           excited:end the greeting with '!' (bool)" in lines
    assert any(line.startswith("vermagic:       ") for line in lines)
    r = sh(f"{real_tool('modinfo')} -F livepatch {built}/greeting_fix.ko")
    assert r.stdout == "Y\n"
    r = sh(f"readelf -h {built}/greeting_fix.ko")
    assert "REL (Relocatable file)" in r.stdout and "X86-64" in r.stdout
    r = sh(f"readelf -p .gnu.linkonce.this_module {built}/greeting_fix.ko")
    assert "[    18]  greeting_fix" in r.stdout
    r = sh(f"readelf -p .modinfo {built}/greeting.ko")
    assert "name=greeting" in r.stdout and "license=GPL" in r.stdout and "livepatch" not in r.stdout
    shim = sh(f"{SHIMS}/modinfo {built}/greeting_fix.ko")
    assert shim.stdout == sh(f"{real_tool('modinfo')} {built}/greeting_fix.ko").stdout


def test_build_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import nonexistent_module_xyz\n")
    r = sh(f"livefs modules build {bad}")
    assert r.returncode == 1
    assert r.stderr == "livefs: bad.py: ModuleNotFoundError: No module named 'nonexistent_module_xyz'\n"
    two = sh(f"livefs modules build {EXAMPLE}")
    assert two.returncode == 1 and "choose one with --name" in two.stderr and two.stderr.count("\n") == 1
    invalid = tmp_path / "invalid.py"
    invalid.write_text("from livefs.catalog.api import ModuleDef, Param\n"
                       "m = ModuleDef(name='x', params=[Param('p', 'float')])\n")
    r = sh(f"livefs modules build {invalid}")
    assert r.stderr == "livefs: invalid.py: x: parameter p has unknown type 'float'\n"
    jump = tmp_path / "jump.py"
    jump.write_text("from livefs.catalog.api import *\n"
                    "fix = ModuleDef(name='jfix', livepatch=True, patch=Patch(objs=[Object('tgt', [Func("
                    "'tgt_show', lambda c: '', new_name='lp_tgt_show', static_branches=['tgt_key'])])]))\n")
    r = sh(f"livefs modules build {jump}")
    assert r.stderr == ("livefs: jump.py: Found a jump label at lp_tgt_show()+0x0, using key tgt_key, which is "
                        "defined in a module.  Use static_key_enabled() instead.\n")


def test_load_user_modules_through_the_mount(mnt, built, tmp_path):
    env = {"LIVEFS_ROOT": str(mnt), "PATH": f"{SHIMS}:{os.environ['PATH']}"}
    r = sh(f"insmod {built}/greeting.ko && cat {mnt}/proc/greeting && insmod {built}/greeting_fix.ko && "
           f"cat {mnt}/proc/greeting && echo Y > {mnt}/sys/module/greeting_fix/parameters/excited && "
           f"cat {mnt}/proc/greeting", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "helo, world\nhello, world.\nhello, world!\n"
    assert (mnt / "sys/kernel/livepatch/greeting_fix/greeting/greeting_show,1").is_dir()
    r = sh(f"echo 0 > {mnt}/sys/kernel/livepatch/greeting_fix/enabled; rmmod greeting_fix; "
           f"cat {mnt}/proc/greeting; rmmod greeting; ls {mnt}/proc/greeting", env=env)
    assert r.stdout == "helo, world\n" and "No such file or directory" in r.stderr


def test_malformed_and_failing_stand_ins(mnt, built, tmp_path):
    env = {"LIVEFS_ROOT": str(mnt), "PATH": f"{SHIMS}:{os.environ['PATH']}"}
    garbage = tmp_path / "garbage.ko"
    garbage.write_bytes(b"\x7fELF" + os.urandom(200))
    truncated = tmp_path / "truncated.ko"
    truncated.write_bytes((built / "greeting_fix.ko").read_bytes()[:300])
    for ko in (garbage, truncated):
        r = sh(f"insmod {ko}", env=env)
        assert r.stderr == f"insmod: ERROR: could not insert module {ko}: Invalid module format\n"
    crashing = tmp_path / "crashing.py"
    crashing.write_text("from livefs.catalog.api import ModuleDef\n"
                        "def init(ctx):\n    raise ValueError('oops')\n"
                        "crashing = ModuleDef(name='crashing', init=init)\n")
    failing = tmp_path / "failing.py"
    failing.write_text("from livefs.catalog.api import ModuleDef\n"
                       "failing = ModuleDef(name='failing', init=lambda ctx: -19)\n")
    for src in (crashing, failing):
        assert sh(f"livefs modules build {src} -o {tmp_path}/{src.stem}.ko").returncode == 0
    r = sh(f"insmod {tmp_path}/crashing.ko", env=env)
    assert r.stderr.endswith("crashing.ko: Invalid module format\n")
    r = sh(f"insmod {tmp_path}/failing.ko", env=env)
    assert r.stderr.endswith("failing.ko: No such device\n")
    r = sh("lsmod", env=env)
    assert r.stdout == "Module                  Size  Used by\n"
    assert not list((mnt / "sys/module").iterdir())



def test_only_root_may_load(require_fuse, built):
    public = Path(tempfile.mkdtemp(prefix="livefs-test-"))
    public.chmod(0o755)
    target = public / "mnt"
    target.mkdir()
    try:
        assert sh(f"livefs mount --cpus 1 {target}").returncode == 0
        ko = public / "greeting.ko"
        shutil.copy(built / "greeting.ko", ko)
        ko.chmod(0o644)
        # as nobody, through bash and cat only: the checkout itself may not be readable by others
        ctl = target / "sys/kernel/debug/livefs/init_module"
        r = sh(f"setpriv --reuid=65534 --regid=65534 --clear-groups bash -c 'cat {ko} > {ctl}'")
        # debugfs is root's (0700): the control file cannot even be reached
        assert r.stderr == f"bash: line 1: {ctl}: Permission denied\n"
        assert not (target / "sys/module/greeting").exists()
        r = sh(f"setpriv --reuid=65534 --regid=65534 --clear-groups bash -c "
               f"'echo 0 > {target}/proc/sys/kernel/ftrace_enabled'")
        assert "Permission denied" in r.stderr
    finally:
        sh(f"livefs umount {target}")
        shutil.rmtree(public)


def test_a_module_image_larger_than_one_fuse_write_loads(mnt, tmp_path):
    """FUSE splits a write into 128 KiB requests; the whole image must still arrive as one."""
    source = tmp_path / "big.py"
    source.write_text(EXAMPLE.read_text() + "\n" + "".join(f"# padding line {i:06d} {'x' * 60}\n"
                                                           for i in range(6000)))
    r = sh(f"livefs modules build {source} --name greeting -o {tmp_path}/greeting.ko")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "greeting.ko").stat().st_size > 3 * 128 * 1024
    env = {"LIVEFS_ROOT": str(mnt), "PATH": f"{SHIMS}:{os.environ['PATH']}"}
    r = sh(f"insmod {tmp_path}/greeting.ko", env=env)
    assert r.returncode == 0, r.stderr
    assert (mnt / "sys/module/greeting").is_dir()
    assert (mnt / "proc/greeting").read_text() == "helo, world\n"


def test_a_torn_init_module_record_is_refused(mnt):
    ctl = mnt / "sys/kernel/debug/livefs/init_module"
    r = sh(f"printf 'abc\\n' > {ctl}")
    assert r.stderr.endswith("write error: Invalid argument\n"), r.stderr
    r = sh(f"printf '999999999999\\nxx' > {ctl}")
    assert r.stderr.endswith("write error: File too large\n"), r.stderr
    assert sh(f"cat {mnt}/sys/kernel/debug/livefs/modules").stdout == ""
