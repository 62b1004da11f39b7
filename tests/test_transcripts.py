"""The real-kernel transcripts, replayed under livefs and compared line by line.

Every scenario of tests/transcripts/scenarios that has a recording in
tests/transcripts/6.12 runs under ``livefs run --kernel-version 6.12 --cpus 2``
with our own helpers (tests/transcripts/support), as
contrib/replay_transcripts.py does; both transcripts are normalised by its
rules (machine identity and wall-clock timing, each rule saying why) and
compared.  Every difference left must be listed in
tests/transcripts/known-differences.txt with its cause, and every listed one
must still occur: a fix to the model makes this test fail until its entries
are removed, so the list only shrinks.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location("replay_transcripts", REPO / "contrib" / "replay_transcripts.py")
replay = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = replay  # dataclasses look their module up by name
_spec.loader.exec_module(replay)

VERSION = "6.12"
SCENARIOS = replay.recorded_scenarios(VERSION)
# One scenario takes 5 to 30 s (signals sleeps 18 s on purpose); give a loaded machine room.
TIMEOUT = 180


@pytest.fixture(scope="module")
def known() -> list:
    return replay.parse_known(replay.KNOWN.read_text())


@pytest.fixture(scope="module")
def oracle_env(tmp_path_factory) -> Path:
    """$ORACLE for the scenarios: our lib.sh and sysio, the module stand-ins."""
    from livefs.testing.plugin import require_fuse

    require_fuse()
    return replay.prepare(tmp_path_factory.mktemp("transcripts"))


def test_every_scenario_is_recorded():
    scripts = sorted(p.stem for p in (replay.TRANSCRIPTS / "scenarios").glob("*.sh"))
    assert scripts == SCENARIOS


def test_known_differences_name_recorded_scenarios_and_causes(known):
    for entry in known:
        assert entry.scenario in SCENARIOS, f"line {entry.lineno}: no scenario {entry.scenario}"
        assert entry.reason != "TODO" and ": " in entry.reason, (
            f"line {entry.lineno}: the reason must name the cause ('model: ...', 'FUSE: ...', ...)")


@pytest.mark.parametrize("name", SCENARIOS)
def test_transcript(name, oracle_env, known, capsys):
    res = replay.run_scenario(name, oracle_env, VERSION, timeout=TIMEOUT)
    with capsys.disabled():
        print(f"\n{name}: {len(res.expected)} lines recorded, {res.matching} matching", end="")
    unlisted, gone = replay.check_known(name, res.diffs, known)
    problems = [f"not in known-differences.txt: {replay.show_difference(d)}" for d in unlisted]
    problems += [f"known-differences.txt line {e.lineno} no longer occurs (remove it): "
                 f"{replay.show_difference(e.diff)}" for e in gone]
    assert not problems, f"{name}: {len(res.expected)} lines recorded, {res.matching} matching\n" + "\n".join(
        problems)
