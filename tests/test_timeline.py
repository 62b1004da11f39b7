"""The transition record and its timeline, in virtual time: lanes, grouping
at scale, reversal, and the three renderings."""

from __future__ import annotations

import json

from livefs import timeline
from livefs.catalog import find
from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.livepatch.status import transitions_json
from livefs.kernel.tasks import TaskKind

LP = "test_klp_livepatch"


def _load(k: Kernel, shell) -> None:
    with k.syscall(shell):
        assert k.load_module(find(LP)) == 0


def _last(k: Kernel) -> tuple[dict, int]:
    data = json.loads(transitions_json(k))
    return data["records"][-1], data["now_ns"]


def test_a_running_transition_is_drawn_up_to_now():
    k = Kernel(ncpus=2)
    shell = k.task_for(900_001, "bash")
    stuck = k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    _load(k, shell)
    k.advance(5 * NSEC_PER_SEC)
    record, now = _last(k)
    assert record["outcome"] == "running" and record["end_ns"] is None
    lay = timeline.layout(record, now)
    assert lay.end_ns == now and lay.title == f"'{LP}' to patched (running)"
    lane = next(ln for ln in lay.lanes if ln.label == f"{stuck.pid} stuck")
    assert lay.lanes[-1] is lane  # the straggler comes last
    assert lane.detail == "never switched"
    assert [s.state for s in lane.segments] == ["unswitched", "blocked: sleeping on function cmdline_proc_show"]
    assert lane.segments[-1].end_ns == now
    # one attempt in the write, then one a second: 1 + 5
    assert [kind for _, kind, _ in lay.markers].count("attempt") == 6


def _stalled(seconds: int, store: str, value: bytes):
    """A patch held by a kthread asleep in the old function for ``seconds``,
    then ``value`` written to the patch's ``store`` attribute by the shell."""
    k = Kernel(ncpus=2)
    shell = k.task_for(900_001, "bash")
    k.sched.spawn(TaskKind.KTHREAD, "stuck", k.vmlinux_func("cmdline_proc_show"))
    _load(k, shell)
    k.advance(seconds * NSEC_PER_SEC)
    with k.syscall(shell):
        assert getattr(k.livepatch, store)(k.livepatch.transition_patch, value) == 0
    return k, shell


def test_reversal_flips_who_must_switch():
    k, shell = _stalled(2, "enabled_store", b"0")  # reverse
    k.advance(2 * NSEC_PER_SEC)
    record, now = _last(k)
    assert record["outcome"] == "complete" and record["target"] == "patched, reversed to unpatched"
    lay = timeline.layout(record, now)
    assert "reverse" in [kind for _, kind, _ in lay.markers]
    # the shell switched in the write that enabled, and back at the exit of the one that reversed
    assert [(s["id"], s["cause"]) for s in record["switches"] if s["id"] == shell.pid] == [
        (shell.pid, "stack check"), (shell.pid, "return to user")]
    stuck_lane = next(ln for ln in lay.lanes if ln.label.endswith(" stuck"))
    assert stuck_lane.detail == "reversal" and stuck_lane.segments[-1].state == "switched"
    text = timeline.render_text(lay, 40)
    assert "V" in next(line for line in text.splitlines() if line.startswith("events"))


def test_ten_thousand_tasks_fold_into_groups_and_stragglers():
    k = Kernel(ncpus=2)
    shell = k.task_for(900_001, "bash")
    for i in range(10_000):
        k.sched.spawn(TaskKind.USER, f"u{i}", None)
    stuck = [k.sched.spawn(TaskKind.KTHREAD, f"stuck{i}", k.vmlinux_func("cmdline_proc_show")) for i in range(3)]
    _load(k, shell)
    k.advance(3 * NSEC_PER_SEC)
    record, now = _last(k)
    assert len(record["tasks"]) == 10_000 + 3 + 12  # the staged, the stuck, the machine's own and the shell
    lay = timeline.layout(record, now, max_lanes=12)
    assert len(lay.lanes) <= 12
    groups = [ln for ln in lay.lanes if " tasks: " in ln.label]
    assert groups[0].label.startswith("10") and groups[0].detail == "stack check"
    assert {ln.label for ln in lay.lanes[-3:]} == {f"{t.pid} {t.comm}" for t in stuck}
    svg = timeline.render_svg(lay)
    assert svg.count("<rect") < 200  # a picture of the groups, not of 10,000 lanes


def test_renderings(tmp_path):
    k, _ = _stalled(16, "force_store", b"1")
    k.advance(NSEC_PER_SEC)
    record, now = _last(k)
    lay = timeline.layout(record, now)
    text = timeline.render_text(lay, 50)
    events = next(line for line in text.splitlines() if line.startswith("events"))
    assert events.index("S") < events.index("F") < events.index("C")
    svg = timeline.render_svg(lay)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>") and ">force</text>" in svg
    png = tmp_path / "t.png"
    timeline.render_png(lay, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
