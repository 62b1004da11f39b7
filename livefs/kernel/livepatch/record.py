"""What happened in a transition, task by task, for people and for tests.

The kernel keeps no history: once a transition completes, nothing says which
task held it up, for how long, or what finally switched it.  The model writes
it down as it goes -- each task's switch with its time, attempt and cause,
each failed switch with what blocked it, the signals, a force, a reversal and
the end -- so that ``livefs status --json`` and ``livefs timeline`` can show a
transition as it unfolded, and property tests can assert on how it did.

Recording is cheap by design: a failed check is one tuple appended, a switch
another, so a retry pass over 100,000 tasks stays fast.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Iterable

import attrs

from ..tasks import Task, TaskKind


class Cause(enum.Enum):
    """Why a task switched (or left the transition)."""

    STACK_CHECK = "stack check"         # klp_try_switch_task() from the transition work
    RETURN_TO_USER = "return to user"   # exit_to_user_mode()
    IDLE_LOOP = "idle loop"             # do_idle() on a kicked CPU
    COND_RESCHED = "cond_resched"       # __klp_sched_try_switch() at a schedule point
    FAKE_SIGNAL = "fake signal"         # klp_send_signals() kicked it out of an interruptible sleep
    FORK = "fork"                       # born mid-transition: inherits its parent's state
    FORCE = "force"                     # echo 1 > force
    EXIT = "exit"                       # the task ended before it switched
    KTHREAD_LOOP = "kthread loop"       # kGraft model: a kthread at the safe point of its main loop
    IMMEDIATE = "immediate"             # immediate model: no consistency model at all
    STAGED = "staged"                   # put into the new code by the mock's staging controls


# the causes that put a task at the target state (EXIT takes it out instead)
SWITCHING = frozenset(Cause) - {Cause.EXIT}


def task_id(task: Task) -> int:
    """A key for each task in a record: its pid, except for the idle tasks,
    which all have pid 0 and are told apart by CPU (-1 for CPU 0, -2 ...)."""
    return -1 - (task.cpu or 0) if task.kind is TaskKind.IDLE else task.pid


@attrs.define(slots=True, frozen=True)
class TaskInfo:
    id: int
    pid: int
    comm: str
    kind: str


@attrs.define(slots=True)
class TransitionRecord:
    """One transition of one patch, from init to completion (or still running).

    ``switches`` and ``blocked`` are tuples ``(t_ns, attempt, task id, ...)`` in the
    order they happened; ``events`` holds the rest (start, signals, force,
    reverse, complete) as ``(t_ns, attempt, kind, detail)``.
    """

    patch: str
    target: str
    model: str
    start_ns: int
    tasks: dict[int, TaskInfo] = attrs.field(factory=dict)
    initial_pending: list[int] = attrs.field(factory=list)
    switches: list[tuple[int, int, int, Cause]] = attrs.field(factory=list)
    blocked: list[tuple[int, int, int, str]] = attrs.field(factory=list)
    events: list[tuple[int, int, str, str]] = attrs.field(factory=list)
    end_ns: int | None = None
    outcome: str = "running"

    def note_task(self, task: Task) -> None:
        key = task_id(task)
        if key not in self.tasks:
            self.tasks[key] = TaskInfo(key, task.pid, task.comm, task.kind.value)

    def event(self, t_ns: int, attempt: int, kind: str, detail: str = "") -> None:
        self.events.append((t_ns, attempt, kind, detail))

    def counts(self) -> dict[str, int]:
        """How many switches each cause made, and the other tallies."""
        out: dict[str, int] = {}
        for _, _, _, cause in self.switches:
            out[cause.value] = out.get(cause.value, 0) + 1
        out["blocked checks"] = len(self.blocked)
        out["signals"] = sum(1 for e in self.events if e[2] == "signal")
        return out

    def attempts(self) -> int:
        return max((e[1] for e in self.events), default=0)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: what ``livefs timeline`` draws from."""
        return {
            "patch": self.patch, "target": self.target, "model": self.model,
            "start_ns": self.start_ns, "end_ns": self.end_ns, "outcome": self.outcome,
            "tasks": [{"id": t.id, "pid": t.pid, "comm": t.comm, "kind": t.kind} for t in self.tasks.values()],
            "initial_pending": list(self.initial_pending),
            "switches": [{"t_ns": t, "attempt": a, "id": i, "cause": c.value} for t, a, i, c in self.switches],
            "blocked": [{"t_ns": t, "attempt": a, "id": i, "why": w} for t, a, i, w in self.blocked],
            "events": [{"t_ns": t, "attempt": a, "kind": k, "detail": d} for t, a, k, d in self.events],
        }


@attrs.define
class TransitionLog:
    """The recent transitions of a machine, newest last (bounded)."""

    keep: int = 8
    records: deque = attrs.field(init=False)
    current: TransitionRecord | None = None

    def __attrs_post_init__(self) -> None:
        self.records = deque(maxlen=self.keep)

    def begin(self, record: TransitionRecord) -> None:
        self.current = record
        self.records.append(record)

    def end(self, t_ns: int, outcome: str) -> None:
        if self.current is not None:
            self.current.end_ns = t_ns
            self.current.outcome = outcome
            self.current = None

    def last(self) -> TransitionRecord | None:
        return self.records[-1] if self.records else None

    def __iter__(self) -> Iterable[TransitionRecord]:
        return iter(self.records)
