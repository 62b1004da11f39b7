"""The newest upstream livepatch selftests (issue 12): the 2026 series that make
them build and run on 4.12 kernels changed what the catalog's modules must
serve.  test_klp_mod_target shows its text in a module_param_cb() parameter,
klp_mod_arg, whose .get (test_klp_mod_target_get) test_klp_mod_patch replaces;
test-kprobe.sh passes has_post_handler=y/n; functions.sh's cleanup disables and
removes every module a failed test left loaded (TEST_MODS).  The older forms
(/proc/test_klp_mod_target, has_post_handler=true/false) still work."""

from __future__ import annotations

import errno
import os

import pytest

from conftest import livefs_cli
from livefs.catalog import catalog
from livefs.fs.root import build_root
from livefs.fs.tree import Attr, Request, resolve
from livefs.kernel.moddef import Function, ModuleDef, Param, validate

KLP_MOD_ARG = "sys/module/test_klp_mod_target/parameters/klp_mod_arg"


def _read(machine, path: str) -> str | None:
    req = Request(machine.k, machine.shell)
    node = resolve(build_root(), req, path)
    if node is None:
        return None
    with machine.k.syscall(machine.shell):
        return node.open(req, os.O_RDONLY).read(req, 4096, 0).decode()


def _disable_and_remove(machine, patch: str) -> None:
    assert machine.write(patch, "enabled", b"0") == 0
    machine.k.settle()
    assert machine.rmmod(patch) == 0


# -- test_klp_mod_target: klp_mod_arg, module_param_cb(.get only, 0444) ------------------------------

def test_klp_mod_arg_shows_what_the_get_function_returns_and_the_patch_replaces_it(machine):
    assert machine.insmod("test_klp_mod_target") == 0
    node = resolve(build_root(), Request(machine.k, machine.shell), KLP_MOD_ARG)
    assert isinstance(node, Attr) and node.perm == 0o444 and node.store is None
    assert _read(machine, KLP_MOD_ARG) == "test_klp_mod_target: original output\n"
    assert machine.insmod("test_klp_mod_patch") == 0
    machine.k.settle()
    # test-livepatch.sh's "module function patching": the newest form and the first one
    assert _read(machine, KLP_MOD_ARG) == "test_klp_mod_patch: this has been live patched\n"
    assert _read(machine, "proc/test_klp_mod_target") == "test_klp_mod_patch: this has been live patched\n"
    _disable_and_remove(machine, "test_klp_mod_patch")
    assert _read(machine, KLP_MOD_ARG) == "test_klp_mod_target: original output\n"
    assert _read(machine, "proc/test_klp_mod_target") == "test_klp_mod_target: original output\n"
    assert machine.rmmod("test_klp_mod_target") == 0
    assert _read(machine, KLP_MOD_ARG) is None and _read(machine, "proc/test_klp_mod_target") is None


def test_klp_mod_arg_is_patched_when_the_target_loads_after_the_patch(machine):
    assert machine.insmod("test_klp_mod_patch") == 0
    machine.k.settle()
    machine.set_mark()
    assert machine.insmod("test_klp_mod_target") == 0
    assert machine.log(debug=False) == [
        "livepatch: applying patch 'test_klp_mod_patch' to loading module 'test_klp_mod_target'",
        "test_klp_mod_target: test_klp_mod_target_init"]
    assert _read(machine, KLP_MOD_ARG) == "test_klp_mod_patch: this has been live patched\n"
    _disable_and_remove(machine, "test_klp_mod_patch")
    assert _read(machine, KLP_MOD_ARG) == "test_klp_mod_target: original output\n"


def test_the_patch_lists_both_functions_of_the_target(machine):
    assert machine.insmod("test_klp_mod_target") == 0
    assert machine.insmod("test_klp_mod_patch") == 0
    machine.k.settle()
    req = Request(machine.k, machine.shell)
    obj = resolve(build_root(), req, "sys/kernel/livepatch/test_klp_mod_patch/test_klp_mod_target")
    names = sorted(n for n, _ in obj.listing(req))
    assert "test_klp_mod_target_get,1" in names and "test_klp_mod_target_show,1" in names
    # the replacements are test_klp_mod_patch.c's livepatch_mod_target_get/_show
    patched = {f.name for f in machine.k.symbols.functions("test_klp_mod_patch")}
    assert {"livepatch_mod_target_get", "livepatch_mod_target_show"} <= patched


def test_klp_mod_arg_cannot_be_set_at_load(machine):
    """The ops have no .set: parse_one() would call a NULL pointer (an oops);
    the model refuses the value as an invalid one."""
    machine.set_mark()
    assert machine.insmod("test_klp_mod_target", "klp_mod_arg=x") == -errno.EINVAL
    assert "test_klp_mod_target: `x' invalid for parameter `klp_mod_arg'" in machine.log()
    assert "test_klp_mod_target" not in machine.k.modules.modules


def test_klp_mod_arg_has_a_description_and_no_parmtype(tmp_path, capsys):
    from livefs import modimage
    from livefs.catalog.image import modinfo_fields
    from livefs.shim import main

    defn = catalog()["test_klp_mod_target"]
    info = modinfo_fields(defn, "6.12.0-livefs")
    assert ("parm", "klp_mod_arg:The value of this argument will be livepatched") in info
    assert not [v for k, v in info if k == "parmtype"]
    ko = tmp_path / "test_klp_mod_target.ko"
    ko.write_bytes(modimage.build(defn.name, info, modimage.make_payload({})))
    assert main("modinfo", [str(ko)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "parm:           klp_mod_arg:The value of this argument will be livepatched" in out
    assert "author:         Pablo Hugen <phugen@redhat.com>" in out


def test_a_get_function_must_be_one_of_the_modules_functions():
    bad = ModuleDef(name="lf_cb", params=[Param("p", perm=0o444, get="nowhere")])
    assert "get function 'nowhere'" in validate(bad)
    good = ModuleDef(name="lf_cb", params=[Param("p", perm=0o444, get="lf_get")],
                     functions=[Function("lf_get", lambda call: "x\n")])
    assert validate(good) is None


# -- test_klp_kprobe: has_post_handler=y/n (the newest) and true/false -----------------------------

@pytest.mark.parametrize("with_post, without_post", [("y", "n"), ("true", "false"), ("Y", "N"), ("1", "0")])
def test_has_post_handler_takes_every_kstrtobool_form(machine, with_post, without_post):
    assert machine.insmod("test_klp_kprobe", f"has_post_handler={with_post}") == 0
    assert machine.k.kprobes.probes[0].post_handler
    assert machine.insmod("test_klp_livepatch") == -errno.EBUSY  # one IPMODIFY per function
    assert machine.rmmod("test_klp_kprobe") == 0
    assert machine.insmod("test_klp_kprobe", f"has_post_handler={without_post}") == 0
    assert not machine.k.kprobes.probes[0].post_handler
    assert machine.insmod("test_klp_livepatch") == 0
    machine.k.settle()
    assert machine.rmmod("test_klp_kprobe") == 0
    _disable_and_remove(machine, "test_klp_livepatch")


# -- under `livefs run`: the newest functions.sh's way of reading and cleaning up -------------------

# Not the upstream script: the same steps, written here.  A test case that dies
# with a livepatch and its target loaded leaves them to the EXIT trap, which
# disables each livepatch (modinfo says livepatch: Y) and removes each module.
_SCRIPT = r"""
set -e
livefs modules export test_modules >/dev/null
TEST_MODS=()
cleanup() {
    for m in "${TEST_MODS[@]}"; do
        if [[ $(modinfo "test_modules/$m.ko" | awk '/^livepatch:/{print $NF}') == "Y" ]]; then
            echo 0 > /sys/kernel/livepatch/$m/enabled
            while [[ -e /sys/kernel/livepatch/$m ]]; do sleep 0.1; done
        fi
        while [[ $(cat /sys/module/$m/refcnt) != 0 ]]; do sleep 0.1; done
        rmmod $m
    done
    ls /sys/kernel/livepatch | wc -l; ls -d /sys/module/test_klp_* 2>/dev/null | wc -l
}
trap cleanup EXIT
for m in test_klp_mod_target test_klp_mod_patch; do insmod test_modules/$m.ko; TEST_MODS+=($m); done
while [[ $(cat /sys/kernel/livepatch/test_klp_mod_patch/transition) != 0 ]]; do sleep 0.1; done
cat /sys/module/test_klp_mod_target/parameters/klp_mod_arg
stat -c %A /sys/module/test_klp_mod_target/parameters/klp_mod_arg
exit 1
"""


def test_livefs_run_serves_klp_mod_arg_and_the_cleanup_trap(require_fuse, tmp_path):
    r = livefs_cli("run", "--", "bash", "-c", _SCRIPT, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == ["test_klp_mod_patch: this has been live patched", "-r--r--r--", "0", "0"]
