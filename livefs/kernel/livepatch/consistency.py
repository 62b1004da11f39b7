"""Which consistency model the model machine runs.

Only ``hybrid`` is the kernel's (since 4.12): per-task switching at kernel
exit and in the idle loop (kGraft's half) plus stack checks of sleeping tasks
(kpatch's half), with cond_resched() and fake signals to speed stragglers up.
The others exist to show why it is built that way:

``kgraft``
    per task, and only where a task provably holds no kernel state: on its way
    back to user space (fake signals push sleepers there), in the idle loop,
    and for kthreads at the safe point of their main loop.  No stack checks,
    so a task that sleeps in the kernel, in any function, holds the
    transition until it leaves the kernel.
``kpatch``
    stop the machine and look at every stack; switch every task at once when
    none holds code the patch takes away, else try again a second later.
    Nothing switches per task.
``immediate``
    no consistency model (livepatch before 4.12): every task runs the new code
    from the moment the patch is enabled, even one halfway through a call
    chain that began in the old code.
"""

from __future__ import annotations

import enum


class ConsistencyModel(enum.Enum):
    HYBRID = "hybrid"
    KGRAFT = "kgraft"
    KPATCH = "kpatch"
    IMMEDIATE = "immediate"

    @classmethod
    def parse(cls, text: str) -> "ConsistencyModel":
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown consistency model {text!r} "
                             f"(choose from {', '.join(m.value for m in cls)})") from None

    @property
    def switches_per_task(self) -> bool:
        """A task switches on its own at kernel exit and in the idle loop."""
        return self in (ConsistencyModel.HYBRID, ConsistencyModel.KGRAFT)
