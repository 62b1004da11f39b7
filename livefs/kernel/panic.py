"""The kernel's own complaints: the taint string, dump_stack() and WARN().

Their lines are noise to the selftests (check_result keeps only livepatch and
test_klp lines) but they are what a person reading dmesg expects to see, in
the 6.12 shape: ``CPU: 0 UID: 0 PID: … Comm: … Tainted: G           OE K    …``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .printk import KERN_WARNING

if TYPE_CHECKING:
    from .kernel import Kernel

# kernel/panic.c taint_flags: (letter when set, letter when clear, name), by bit
TAINT_FLAGS = [
    ("P", "G", "PROPRIETARY_MODULE"), ("F", " ", "FORCED_MODULE"), ("S", " ", "CPU_OUT_OF_SPEC"),
    ("R", " ", "FORCED_RMMOD"), ("M", " ", "MACHINE_CHECK"), ("B", " ", "BAD_PAGE"), ("U", " ", "USER"),
    ("D", " ", "DIE"), ("A", " ", "OVERRIDDEN_ACPI_TABLE"), ("W", " ", "WARN"), ("C", " ", "CRAP"),
    ("I", " ", "FIRMWARE_WORKAROUND"), ("O", " ", "OOT_MODULE"), ("E", " ", "UNSIGNED_MODULE"),
    ("L", " ", "SOFTLOCKUP"), ("K", " ", "LIVEPATCH"), ("X", " ", "AUX"), ("T", " ", "RANDSTRUCT"),
    ("N", " ", "TEST"), ("J", " ", "FWCTL"),
]
TAINT_WARN = 9
HARDWARE = "QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3-debian-1.16.3-2 04/01/2014"


def _flag_count(k: "Kernel") -> int:
    return 20 if k.version.at_least(6, 15) else 19  # TAINT_FWCTL arrived in 6.15


def taint_string(k: "Kernel") -> str:
    mask = k.modules.tainted
    return "".join(on if mask & (1 << bit) else off for bit, (on, off, _) in enumerate(TAINT_FLAGS[:_flag_count(k)]))


def add_taint_mask(k: "Kernel", mask: int) -> None:
    """What a write to /proc/sys/kernel/tainted does: taint only grows, and
    only by the flags this kernel knows."""
    k.modules.tainted |= mask & ((1 << _flag_count(k)) - 1)


def dump_stack(k: "Kernel") -> list[str]:
    task = k.current
    comm, pid = (task.comm, task.pid) if task else ("swapper/0", 0)
    mask = k.modules.tainted
    lines = [f"CPU: 0 UID: 0 PID: {pid} Comm: {comm} Tainted: {taint_string(k)} {k.version.release} #1"]
    if mask:
        names = [f"[{on}]={name}" for bit, (on, _, name) in enumerate(TAINT_FLAGS) if mask & (1 << bit)]
        lines.append("Tainted: " + ", ".join(names))
    lines += [f"Hardware name: {HARDWARE}", "Call Trace:", " <TASK>", " dump_stack_lvl+0x5d/0x80"]
    for frame in reversed(task.stack if task else []):
        where = "" if frame.obj == "vmlinux" else f" [{frame.obj}]"
        lines.append(f" {frame.name}+0x0/0x{frame.size:x}{where}")
    lines.append(" </TASK>")
    return lines


def print_dump_stack(k: "Kernel") -> None:
    for line in dump_stack(k):
        k.printk_task(KERN_WARNING, line)


def warn(k: "Kernel", message: str | None, where: str) -> None:
    """WARN(1, message) at ``where`` (file:line), then TAINT_WARN; WARN_ON()
    (``message`` None) prints no message line."""
    task = k.current
    pid = task.pid if task else 0
    k.printk_task(KERN_WARNING, "------------[ cut here ]------------")
    if message is not None:
        k.printk_task(KERN_WARNING, message)
    k.printk_task(KERN_WARNING, f"WARNING: CPU: 0 PID: {pid} at {where}")
    mods = " ".join(f"{m.name}({m.taint_letters})" if m.taint_letters else m.name
                    for m in reversed(list(k.modules.modules.values())))
    k.printk_task(KERN_WARNING, f"Modules linked in: {mods}".rstrip())
    print_dump_stack(k)
    k.printk_task(KERN_WARNING, "---[ end trace 0000000000000000 ]---")
    k.modules.tainted |= 1 << TAINT_WARN


def warn_on_once(k: "Kernel", where: str) -> None:
    """WARN_ON_ONCE(1) at ``where``: the first time this boot only (its
    __warned flag lives in .data..once, which a reboot resets)."""
    if where in k.warned_once:
        return
    k.warned_once.add(where)
    warn(k, None, where)
