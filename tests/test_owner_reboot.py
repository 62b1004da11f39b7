"""A mock-only reboot throws the old model machine away: the Python threads
of its parked kthreads end with it instead of lingering in the daemon."""

from __future__ import annotations

from livefs.catalog import find
from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.runtime.owner import ModelOwner


def test_reboot_ends_the_old_machines_kthreads():
    k = Kernel(ncpus=1)
    with k.syscall(k.task_for(900_001, "insmod")):
        assert k.load_module(find("lp_busy_target")) == 0  # its worker sleeps while hold=Y
    k.advance(NSEC_PER_SEC)
    threads = [kt.thread for kt in k.sched.kthreads.threads.values()]
    assert threads and all(t.is_alive() for t in threads)
    owner = ModelOwner(k, reboot=Kernel)  # not started: no trio loop needed to swap machines
    owner._boot(Kernel(ncpus=1))
    for t in threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in threads)
    assert owner.kernel is not k and not k.sched.kthreads.threads
