"""The owner of a live model: a trio loop that keeps its time, and one lock.

The model has no locks of its own.  Exactly one thread at a time runs model
code, holding :attr:`ModelOwner.lock`: a FUSE handler thread running a request
to the end as a syscall of the calling process, or the trio loop running the
model's timed work (transition retries, frees) when it falls due on the real
clock.  Requests run in the FUSE thread under the lock rather than hopping
into the trio thread: the hop (``trio.from_thread.run_sync``) costs several
times the whole request, and the lock gives the same single-owner guarantee.
A request that changes the next deadline pokes the trio loop so it re-plans.
A ``scale`` above 1 runs model time faster than the wall clock.

``fast_forward`` skips dead time: when a transition has switched every task and
only waits for its next retry (klp_transition_work, up to about 1.75 s away),
model time jumps to that retry at once.  Every model event still happens, in
the same order and at the same model time; what changes is that model time
runs ahead of the wall clock, and a script that would have acted inside the
skipped wait now acts after the completion -- which is what a real kernel shows
a slower script.  ``livefs selftest`` turns it on; a mount runs at the kernel's
cadence unless asked.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

import trio

from livefs.fs.hostproc import host_process_info
from livefs.fs.tree import Request
from livefs.kernel.clock import NSEC_PER_SEC
from livefs.kernel.kernel import Kernel
from livefs.kernel.livepatch.transition import klp_transition_settled
from livefs.kernel.printk import LogRecord

REAP_INTERVAL_S = 1.0


class ModelOwner:
    def __init__(self, kernel: Kernel, scale: float = 1.0,
                 reboot: Callable[[], Kernel] | None = None, fast_forward: bool = False) -> None:
        self.kernel = kernel
        self._reboot = reboot
        self.scale = scale
        self.fast_forward = fast_forward
        self.skipped_ns = 0  # model time skipped by fast_forward
        self._t0 = time.monotonic_ns()
        self._model_t0 = kernel.clock.now_ns
        self._token: trio.lowlevel.TrioToken | None = None
        self.lock = threading.RLock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._log_cond = threading.Condition()
        self._log_seq = 0
        self._record_waiters: list[Callable[[], None]] = []
        self._known: set[int] = set()
        self._wake: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        kernel.printk.listeners.append(self._on_record)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="livefs-model", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        self._stop.set()
        with self._log_cond:
            self._log_cond.notify_all()
        if self._token is not None:
            try:
                trio.from_thread.run_sync(self._poke, trio_token=self._token)
            except (trio.RunFinishedError, RuntimeError):
                pass
        if self._thread is not None:
            self._thread.join(5)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        # libfuse ends its loop on SIGTERM, SIGINT or SIGHUP only in the thread
        # that takes the signal (its workers block them all): keep them off
        # this thread, or a signal that waited (a stopped daemon) may land here
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        try:
            trio.run(self._main)
        except BaseException as exc:  # surfaced by the daemon, never swallowed silently
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._ready.set()
        last_reap = time.monotonic()
        while not self._stop.is_set():
            with self.lock:
                self._sync_clock()
                if time.monotonic() - last_reap >= REAP_INTERVAL_S:
                    self._reap()
                    last_reap = time.monotonic()
                due = self.kernel.wq.next_deadline()
                if due is not None and self.fast_forward and klp_transition_settled(self.kernel.livepatch):
                    skip = due - self.model_now()
                    if skip > 0:
                        self._model_t0 += skip
                        self.skipped_ns += skip
                    continue  # the next pass runs the retry
            wait_s = REAP_INTERVAL_S
            if due is not None:
                wait_s = min(wait_s, max(0.0, (due - self.model_now()) / NSEC_PER_SEC / self.scale))
            self._wake = trio.Event()
            with trio.move_on_after(wait_s):
                await self._wake.wait()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- time -------------------------------------------------------------------
    def model_now(self) -> int:
        return self._model_t0 + int((time.monotonic_ns() - self._t0) * self.scale)

    def _sync_clock(self) -> None:
        self.kernel.run_until(max(self.kernel.clock.now_ns, self.model_now()))

    # -- tasks -------------------------------------------------------------------
    def _reap(self) -> None:
        for task in list(self.kernel.tasks.tasks.values()):
            if task.external and not task.in_syscall and not os.path.exists(f"/proc/{task.pid}"):
                self.kernel.exit_task(task.pid)
                self._known.discard(task.pid)

    # -- requests ------------------------------------------------------------------
    def syscall(self, pid: int, fn: Callable[[Request], Any], uid: int = 0) -> Any:
        """Run ``fn`` as a syscall of host process ``pid`` (a FUSE request).
        This is every request's path, so it does no more than it must."""
        info = host_process_info(pid) if pid not in self._known else None
        with self.lock:
            k = self.kernel
            self._sync_clock()
            before = k.wq.next_deadline()
            task = k.tasks.get(pid)
            if info is not None or task is None:
                task = k.task_for(pid, *(info or host_process_info(pid)))
                self._known.add(pid)
            entered = k.syscall_enter(task)
            try:
                return fn(Request(k, task, uid))
            finally:
                k.syscall_exit(task, entered)
                if k.reboot_requested and self._reboot is not None:
                    self._boot(self._reboot())
                if self._token is not None and (self.kernel.wq.next_deadline() != before or (
                        self.fast_forward and self.kernel.livepatch.transition_patch is not None)):
                    self._token.run_sync_soon(self._poke)  # re-plan: maybe the wait can be skipped

    def _boot(self, kernel: Kernel) -> None:
        """Replace the model machine (a mock-only reboot, for test isolation);
        the old machine's parked kthreads end with it."""
        old = getattr(self, "kernel", None)
        if old is not None:
            old.sched.kthreads.shutdown()
        kernel.printk.listeners.append(self._on_record)
        self.kernel = kernel
        self._known.clear()
        with self._log_cond:
            self._log_cond.notify_all()

    # -- /dev/kmsg waiters ------------------------------------------------------------
    def _on_record(self, rec: LogRecord) -> None:
        with self._log_cond:
            self._log_seq = rec.seq
            self._log_cond.notify_all()
        waiting, self._record_waiters = self._record_waiters, []
        for wake in waiting:
            wake()

    def on_next_record(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` at the next log record (a poll(2) of /dev/kmsg waits for it).
        Called under :attr:`lock`, where records are made."""
        self._record_waiters.append(wake)

    def wait_for_log(self, timeout: float) -> bool:
        with self._log_cond:
            seen = self._log_seq
            self._log_cond.wait(timeout)
            return self._log_seq != seen
