"""``livefs status --json`` and ``livefs timeline`` through a live mount: a
transition held by a task asleep in the patched function, signalled at its
16th attempt, then forced."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import livefs_cli, sh
from test_fuse_mount import insmod, modules  # noqa: F401 (a fixture)

LP = "test_klp_livepatch"


@pytest.fixture
def fast_mnt(require_fuse, tmp_path: Path):
    """Two model CPUs (so the transition waits for its retries) on a clock 20
    times the wall clock's, so 16 retry periods pass in under a second."""
    target = tmp_path / "mnt"
    target.mkdir()
    r = livefs_cli("mount", "--cpus", "2", "--scale", "20", str(target))
    assert r.returncode == 0, r.stderr
    try:
        yield target
    finally:
        livefs_cli("umount", str(target))


def _status(mnt: Path) -> dict:
    r = livefs_cli("status", "--json", "--mount", str(mnt))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_stalled_signalled_forced_transition(fast_mnt, modules, tmp_path):  # noqa: F811
    mnt = fast_mnt
    r = sh(f"echo 'spawn kthread stuck cmdline_proc_show' > {mnt}/sys/kernel/debug/livefs/tasks")
    assert r.returncode == 0, r.stderr
    insmod(mnt, modules, LP)
    deadline = time.monotonic() + 60
    status = _status(mnt)
    while status["transition"]["attempt"] < 17:  # signals went out in the 16th attempt
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
        status = _status(mnt)
    assert status["consistency_model"] == "hybrid"
    assert [p["name"] for p in status["patches"]] == [LP]
    stuck = [t for t in status["transition"]["pending"] if t["comm"] == "stuck"]
    assert len(stuck) == 1 and stuck[0]["blocked_by"] == "sleeping on function cmdline_proc_show"
    assert sh(f"echo 1 > {mnt}/sys/kernel/livepatch/{LP}/force").returncode == 0
    r = livefs_cli("wait", "--mount", str(mnt), "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert _status(mnt)["transition"] is None

    r = livefs_cli("timeline", "--mount", str(mnt), "--width", "40")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"'{LP}' to patched (forced)"
    events = next(line for line in lines if line.startswith("events"))
    assert events.index("S") < events.index("F") < events.index("C")
    lane = next(line for line in lines if f"{stuck[0]['pid']} stuck" in line)
    assert lane.endswith("| force inside cmdline_proc_show")  # forced while it slept in the old code
    bar = lane.split("|")[1]
    assert "b" in bar and bar.endswith("!")
    assert "blocked by: sleeping on function cmdline_proc_show" in lines

    svg = tmp_path / "t.svg"
    r = livefs_cli("timeline", "--mount", str(mnt), "-o", str(svg))
    assert r.returncode == 0, r.stderr
    text = svg.read_text()
    assert text.startswith("<svg") and ">signal</text>" in text and ">force</text>" in text

    r = livefs_cli("timeline", "--mount", str(mnt), "-o", str(tmp_path / "t.txt"))
    assert (r.returncode, r.stderr) == (1, f"livefs: {tmp_path / 't.txt'}: name a .svg or .png file\n")
    r = livefs_cli("timeline", "--mount", str(mnt), "--back", "1")
    assert r.returncode == 1 and "keeps 1 transition(s)" in r.stderr


def test_timeline_before_any_transition(fast_mnt):
    r = livefs_cli("timeline", "--mount", str(fast_mnt))
    assert (r.returncode, r.stderr) == (1, "livefs: no transition has happened on this mount yet\n")
    assert _status(fast_mnt) == {"consistency_model": "hybrid", "patches": [], "transition": None}


def test_consistency_model_reaches_the_daemon(require_fuse, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    r = livefs_cli("mount", "--cpus", "1", "--consistency-model", "kpatch", str(target))
    assert r.returncode == 0, r.stderr
    try:
        assert _status(target)["consistency_model"] == "kpatch"
    finally:
        livefs_cli("umount", str(target))
    r = livefs_cli("mount", "--consistency-model", "nope", str(target))
    assert r.returncode == 2 and "invalid choice: 'nope'" in r.stderr
