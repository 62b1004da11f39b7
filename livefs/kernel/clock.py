"""Model time and the delayed-work queue.

The kernel model never reads a wall clock.  Everything that happens "later" in
the kernel (the transition retry work, the asynchronous freeing of a patch) is
a :class:`Work` item on a :class:`WorkQueue` keyed by model time.  Whoever
drives the model decides how time moves: unit tests advance it explicitly
(virtual time, no sleeps), a live mount maps it onto the monotonic clock.
This is the same split trio's ``MockClock`` makes between the scheduler and
the source of time.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

import attrs

NSEC_PER_SEC = 1_000_000_000
NSEC_PER_MSEC = 1_000_000


@attrs.define
class Clock:
    """Monotonic model time in nanoseconds since the model machine booted."""

    now_ns: int = 0

    def set(self, ns: int) -> None:
        if ns < self.now_ns:
            raise ValueError("model time cannot go backwards")
        self.now_ns = ns


@attrs.define(eq=False)
class Work:
    """A pending delayed work item; ``cancelled`` work is skipped when due."""

    due_ns: int
    name: str
    fn: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@attrs.define
class WorkQueue:
    """Timed callbacks run in deadline order (FIFO among equal deadlines)."""

    clock: Clock
    _heap: list[tuple[int, int, Work]] = attrs.field(factory=list)
    _counter: itertools.count = attrs.field(factory=itertools.count)

    def schedule(self, delay_ns: int, name: str, fn: Callable[[], None]) -> Work:
        work = Work(self.clock.now_ns + max(0, delay_ns), name, fn)
        heapq.heappush(self._heap, (work.due_ns, next(self._counter), work))
        return work

    def next_deadline(self) -> int | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pending(self) -> list[Work]:
        return [w for _, _, w in sorted(self._heap) if not w.cancelled]

    def run_until(self, t_ns: int) -> int:
        """Run every item due at or before ``t_ns``, moving the clock to each
        item's deadline first, then leave the clock at ``t_ns``.  Returns the
        number of items run."""
        ran = 0
        while True:
            due = self.next_deadline()
            if due is None or due > t_ns:
                break
            _, _, work = heapq.heappop(self._heap)
            if due > self.clock.now_ns:
                self.clock.set(due)
            work.fn()
            ran += 1
        if t_ns > self.clock.now_ns:
            self.clock.set(t_ns)
        return ran
