"""Fast-forward: a live mount may skip model time to the retry that completes
a transition, and only then (owner.py's ``fast_forward``)."""

from __future__ import annotations

import re

from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.livepatch.transition import klp_transition_settled

from conftest import livefs_cli
from test_livepatch_model import sleeper


def test_not_settled_while_a_task_holds_the_transition(smp):
    k = smp.k
    assert not klp_transition_settled(k.livepatch)  # no transition
    worker = sleeper(smp, "cmdline_proc_show")  # sleeps in the function being patched
    assert smp.insmod("test_klp_livepatch") == 0
    lp = k.livepatch
    assert lp.transition_patch is not None and lp.transition_work is not None
    assert not klp_transition_settled(lp)
    worker.stack = [k.vmlinux_func("kthread"), k.vmlinux_func("schedule")]  # back in its loop
    assert not klp_transition_settled(lp)  # unswitched until the retry's stack check
    k.run_until(lp.transition_work.due_ns)
    assert lp.transition_patch is None and worker.patch_state == lp.target_state


def test_settled_after_the_idle_loop_switch(smp):
    """Two CPUs: the first attempt finds the other CPU's idle task running; its
    idle loop switches it at once, and the transition then only waits for the
    retry -- the dead time fast-forward skips."""
    k = smp.k
    assert smp.insmod("test_klp_livepatch") == 0
    lp = k.livepatch
    assert lp.transition_patch is not None and lp.transition_work is not None
    assert klp_transition_settled(lp)
    due = lp.transition_work.due_ns
    k.run_until(due - 1)
    assert lp.transition_patch is not None  # nothing happens before the retry
    k.run_until(due)
    assert lp.transition_patch is None and not klp_transition_settled(lp)


def test_live_transition_is_skipped_ahead_in_wall_time_not_in_model_time(require_fuse, tmp_path):
    """The same load under ``--fast-forward``: the model still takes its retry
    (the log's timestamps are a retry apart), the script waits far less."""
    script = (
        "livefs modules export m test_klp_livepatch >/dev/null;"
        "t0=$EPOCHREALTIME; insmod m/test_klp_livepatch.ko;"
        "while [[ $(cat /sys/kernel/livepatch/test_klp_livepatch/transition) == 1 ]]; do :; done;"
        "t1=$EPOCHREALTIME; echo wall $t0 $t1; dmesg | grep -E 'enabling patch|patching complete'"
    )
    r = livefs_cli("run", "--cpus", "2", "--fast-forward", "--", "bash", "-c", script, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wall = re.search(r"^wall (\S+) (\S+)$", r.stdout, re.M)
    stamps = [float(x) for x in re.findall(r"^\[\s*([\d.]+)\] livepatch: (?:enabling patch|'\S+': patching complete)",
                                         r.stdout, re.M)]
    assert wall and len(stamps) == 2, r.stdout
    model_s = stamps[1] - stamps[0]
    wall_s = float(wall.group(2)) - float(wall.group(1))
    assert model_s >= 0.75  # round_jiffies_relative(HZ): the retry is 0.75-1.75 s after the first attempt
    assert wall_s < model_s, (wall_s, model_s)
