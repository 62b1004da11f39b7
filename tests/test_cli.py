"""Command-line argument handling: clear errors, nothing left behind."""

from __future__ import annotations

from conftest import livefs_cli as livefs


def test_bad_kernel_version():
    r = livefs("mount", "--kernel-version", "banana", "/tmp")
    assert r.returncode == 2 and "not a kernel version" in r.stderr
    r = livefs("mount", "--kernel-version", "4.19", "/tmp")
    assert r.returncode == 2 and "predates" in r.stderr


def test_bad_scale():
    r = livefs("run", "--scale", "0", "--", "true")
    assert r.returncode == 2 and "scale must be" in r.stderr


def test_mount_refuses_missing_and_nonempty_dirs(tmp_path):
    r = livefs("mount", str(tmp_path / "nope"))
    assert r.returncode == 1 and "no such directory" in r.stderr
    (tmp_path / "f").write_text("x")
    r = livefs("mount", str(tmp_path))
    assert r.returncode == 1 and "not empty" in r.stderr


def test_umount_of_non_mount(tmp_path):
    r = livefs("umount", str(tmp_path))
    assert r.returncode == 1 and "not a livefs mount" in r.stderr


def test_run_without_command():
    r = livefs("run")
    assert r.returncode == 1 and "no command given" in r.stderr


def test_modules_export_and_unknown(tmp_path):
    r = livefs("modules", "export", str(tmp_path), "test_klp_livepatch")
    assert r.returncode == 0
    assert (tmp_path / "test_klp_livepatch.ko").read_bytes().startswith(b"\x7fELF")
    r = livefs("modules", "export", str(tmp_path), "no_such_module")
    assert r.returncode == 1 and "not in the catalog" in r.stderr
