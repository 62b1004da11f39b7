"""The kernel caches the mount's directory entries (ENTRY_TIMEOUT_S): nothing a
shell sees may go stale for it.  Readers keep every path below hot in the
kernel's caches while a script enables, disables, removes and reloads a patch
and its module; after each step the script checks, at once and without
retrying, that what the model now has is what stat, test and cat say."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import sh
from test_fuse_mount import modules, shim_env  # noqa: F401  (fixture)

ROUNDS = 12

# $1 mount, $2 modules directory.  Every check runs right after the step it
# checks: no loop_until, no sleep.  The hammer keeps the same paths (and the
# ones under them) looked up, opened and stat'ed in three other processes.
RACE = r"""
set -u
M=$1 MODS=$2
lp=$M/sys/kernel/livepatch/test_klp_livepatch
mod=$M/sys/module/test_klp_livepatch
fail() { echo "FAIL round $r: $*"; exit 1; }
trap 'kill $(jobs -p) 2>/dev/null' EXIT
hammer() {
	while :; do
		[[ -e $lp ]]; stat $lp/vmlinux $mod/refcnt >/dev/null 2>&1
		v=$(cat $lp/enabled 2>/dev/null) && [[ $v != 0 && $v != 1 ]] && echo "BAD enabled: '$v'"
		t=$(cat $lp/transition 2>/dev/null) && [[ $t != 0 && $t != 1 ]] && echo "BAD transition: '$t'"
		cat $mod/refcnt >/dev/null 2>&1
	done
}
for i in 1 2 3; do hammer & done
for ((r = 1; r <= @ROUNDS@; r++)); do
	insmod $MODS/test_klp_livepatch.ko || fail insmod
	[[ -d $lp && -f $lp/enabled && -d $mod ]] || fail "not there after insmod"
	[[ $(cat $lp/enabled) == 1 ]] || fail "enabled is not 1"
	stat -c %h $lp >/dev/null || fail "stat of the patch"
	echo 0 > $lp/enabled || fail "disable"
	# one model CPU and nothing in the way: the transition and the free are done
	[[ -e $lp ]] && fail "the patch directory is still there after the disable"
	[[ -e $lp/enabled ]] && fail "enabled is still there"
	cat $lp/enabled 2>/dev/null && fail "enabled could be read"
	cd $lp 2>/dev/null && fail "could cd into the freed patch"
	ls $M/sys/kernel/livepatch | grep -qx test_klp_livepatch && fail "listed after the free"
	[[ -d $mod ]] || fail "the module went with its patch"
	rmmod test_klp_livepatch || fail rmmod
	[[ -e $mod ]] && fail "the module directory is still there after rmmod"
	stat $mod/refcnt 2>/dev/null && fail "refcnt could be stat'ed"
	[[ $(cat $M/proc/cmdline) == *"live patched"* ]] && fail "still patched"
done
echo "rounds: @ROUNDS@"
"""


def test_entries_never_outlive_the_model(mnt: Path, modules: Path) -> None:  # noqa: F811
    script = RACE.replace("@ROUNDS@", str(ROUNDS))
    r = sh(f"bash -c {_quote(script)} race {mnt} {modules}", env=shim_env(mnt))
    assert r.returncode == 0 and "BAD" not in r.stdout, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == f"rounds: {ROUNDS}", r.stdout + r.stderr


def test_a_stale_dentry_still_answers_enoent(mnt: Path, modules: Path) -> None:  # noqa: F811
    """Python's own calls on a path whose dentry the kernel still holds: each
    one reaches the model and gets ENOENT, not the old attributes."""
    env = shim_env(mnt)
    assert sh(f"insmod {modules}/test_klp_livepatch.ko", env=env).returncode == 0
    lp = mnt / "sys/kernel/livepatch/test_klp_livepatch"
    enabled = lp / "enabled"
    before = os.stat(enabled)
    assert (before.st_size, oct(before.st_mode)) == (4096, "0o100644")
    enabled.write_text("0\n")
    for probe in (os.stat, os.lstat, lambda p: os.open(p, os.O_RDONLY)):
        with pytest.raises(FileNotFoundError):
            probe(enabled)
    assert not os.access(enabled, os.F_OK)
    with pytest.raises(FileNotFoundError):
        os.listdir(lp)
    assert sh("rmmod test_klp_livepatch", env=env).returncode == 0
    assert not (mnt / "sys/module/test_klp_livepatch").exists()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
