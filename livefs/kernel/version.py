"""Which kernel ABI the model presents (spec/sysfs-abi.md, version table)."""

from __future__ import annotations

import attrs


@attrs.frozen
class KernelVersion:
    major: int
    minor: int
    label: str

    @classmethod
    def parse(cls, text: str) -> "KernelVersion":
        t = text.strip().lower()
        if t in ("mainline", "latest", ""):
            return MAINLINE
        parts = t.split(".")
        try:
            major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise ValueError(f"not a kernel version: {text!r} (use e.g. 6.12, 6.1 or mainline)") from None
        if (major, minor) < (5, 1):
            raise ValueError(f"kernel {text} predates the v5.1 livepatch API; 5.1 or newer is modelled")
        return cls(major, minor, f"{major}.{minor}")

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)

    @property
    def has_object_patched(self) -> bool:
        return self.at_least(6, 1)

    @property
    def has_replace_attr(self) -> bool:
        return self.at_least(6, 11)

    @property
    def has_stack_order(self) -> bool:
        return self.at_least(6, 14)

    @property
    def klp_sched_switch(self) -> str | None:
        """Where a pending task switches itself at a scheduling point while a
        transition runs (klp_sched_try_switch(), behind klp_sched_try_switch_key):
        nowhere before v6.4; in cond_resched() from v6.4 ("livepatch,sched: Add
        livepatch task switching to cond_resched()") to v6.15; from v6.16
        ("sched,livepatch: Untangle cond_resched() and live-patching") only in
        __schedule(), for a task going to sleep with TASK_FREEZABLE set."""
        if not self.at_least(6, 4):
            return None
        return "cond_resched" if not self.at_least(6, 16) else "__schedule"

    @property
    def release(self) -> str:
        """What ``uname -r`` would print on such a kernel."""
        return "6.18.0-livefs" if self is MAINLINE else f"{self.major}.{self.minor}.0-livefs"


MAINLINE = KernelVersion(6, 18, "mainline")
