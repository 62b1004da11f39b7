"""The A++/A-- demonstration: one workload, four consistency models.

A :class:`Workload` loads ``klp_counter`` (workers running hold/drop cycles,
see ``livefs.catalog.counter``) and then patches, unpatches, reverses and
unloads ``klp_counter_fix`` while time passes, in virtual time.  The property
"A is back at 0 once every worker has finished its cycle" holds under the
kernel's hybrid model, under kpatch's and under kGraft's, and
:func:`hypothesis.find` breaks it under ``immediate`` with a small example.

    from livefs.testing.consistency import Workload, run_workload
    from livefs.kernel.livepatch.consistency import ConsistencyModel
    run_workload(ConsistencyModel.IMMEDIATE, Workload(1, 1500, 700, 0, (("advance", 500), ("toggle", 0))))
"""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from livefs.catalog import find
from livefs.kernel.clock import NSEC_PER_MSEC, NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.livepatch.consistency import ConsistencyModel

FIX = "klp_counter_fix"


@attrs.define(frozen=True)
class Workload:
    """The counter module's parameters and what the user does, in order:
    ``("advance", ms)`` lets time pass; ``("toggle", 0)`` takes the fix one
    step further: load it, disable it (or reverse its transition), or unload
    it once it is gone."""

    workers: int
    hold_ms: int
    gap_ms: int
    stagger_ms: int
    steps: tuple[tuple[str, int], ...]


@attrs.define
class Outcome:
    A: int
    kernel: Kernel


def workloads() -> st.SearchStrategy[Workload]:
    step = st.one_of(st.tuples(st.just("advance"), st.integers(min_value=1, max_value=5000)),
                     st.tuples(st.just("toggle"), st.just(0)))
    return st.builds(Workload, workers=st.integers(1, 3), hold_ms=st.integers(1, 3000),
                     gap_ms=st.integers(0, 2000), stagger_ms=st.integers(0, 1000),
                     steps=st.lists(step, max_size=12).map(tuple))


def _toggle(k: Kernel, shell) -> None:
    lp = k.livepatch
    patch = lp.find_sysfs_patch(FIX)
    with k.syscall(shell):
        if patch is None:
            if k.modules.get(FIX) is not None:
                k.delete_module(FIX)
            else:
                k.load_module(find(FIX))
        elif patch.enabled or patch is lp.transition_patch:
            # disable; on a patch in transition this reverses it
            lp.enabled_store(patch, b"1" if (patch is lp.transition_patch and not patch.enabled) else b"0")


def run_workload(model: ConsistencyModel, workload: Workload, ncpus: int = 2) -> Outcome:
    """Run ``workload``; then stop the workers, let every cycle end, and
    return A (0 unless a worker mixed the two versions)."""
    k = Kernel(ncpus=ncpus, consistency_model=model)
    shell = k.task_for(900_001, "bash")
    params = (f"workers={workload.workers} hold_ms={workload.hold_ms} gap_ms={workload.gap_ms} "
              f"stagger_ms={workload.stagger_ms}")
    with k.syscall(shell):
        assert k.load_module(find("klp_counter"), params) == 0
    for op, ms in workload.steps:
        if op == "advance":
            k.advance(ms * NSEC_PER_MSEC)
        else:
            _toggle(k, shell)
    ctx = k.modules.get("klp_counter").ctx
    ctx.set_param("run", False)
    k.advance((workload.hold_ms + workload.gap_ms) * NSEC_PER_MSEC + NSEC_PER_SEC)
    assert not ctx.data["holding"], "a worker is still inside a hold"
    return Outcome(ctx.data["A"], k)
