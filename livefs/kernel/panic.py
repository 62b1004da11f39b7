"""The kernel's own complaints: the taint string, dump_stack() and WARN().

Their lines are noise to the selftests (check_result keeps only livepatch and
test_klp lines) but they are what a person reading dmesg expects to see, in
the 6.12 shape: ``CPU: 0 UID: 0 PID: … Comm: … Tainted: G           OE K    …``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .printk import KERN_WARNING
from .symbols import stack_trace
from .tasks import TaskKind

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


# Debian's kernels end dump_stack_print_info()'s first line with their package
# version after the release and ``#N`` (``6.12.95+deb12-amd64 #1  Debian
# 6.12.95-1~bpo12+1``); the model's package is livefs
PACKAGE_ID = " livefs"


def init_module_path(k: "Kernel") -> list[str]:
    """The frames above dump_stack_lvl() when do_init_module() complains about
    a positive init return, called through finit_module(2) as kmod's insmod
    calls it (offsets of Debian's 6.12 build, as a recording shows them).
    From v6.4 finit_module() goes through idempotent_init_module() and
    init_module_from_file(); before, __do_sys_finit_module() called
    load_module(), which called do_init_module()."""
    if k.version.at_least(6, 4):
        return ["do_init_module+0x8e/0x270", "init_module_from_file+0x89/0xe0",
                "idempotent_init_module+0x11d/0x310", "__x64_sys_finit_module+0x5e/0xb0",
                "do_syscall_64+0x87/0x1b0", "entry_SYSCALL_64_after_hwframe+0x76/0x7e"]
    return ["do_init_module+0x0/0x40", "load_module+0x0/0x40", "__do_sys_finit_module+0x0/0x40",
            "do_syscall_64+0x0/0x40", "entry_SYSCALL_64_after_hwframe+0x0/0x40"]


# show_regs() of the user-space side of an insmod's finit_module(2) (syscall
# 313, ORIG_RAX 0x139), printed after the frames of a stack that entered from
# user space; the values are those of the 6.12 recording
FINIT_MODULE_USER_REGS = [
    "RIP: 0033:0x7f5a65e88829",
    "Code: 08 89 e8 5b 5d c3 66 2e 0f 1f 84 00 00 00 00 00 90 48 89 f8 48 89 f7 48 89 d6 48 89 ca 4d 89 c2 4d 89"
    " c8 4c 8b 4c 24 08 0f 05 <48> 3d 01 f0 ff ff 73 01 c3 48 8b 0d a7 15 0d 00 f7 d8 64 89 01 48",
    "RSP: 002b:00007ffda0393438 EFLAGS: 00000246 ORIG_RAX: 0000000000000139",
    "RAX: ffffffffffffffda RBX: 000055f7c63207f0 RCX: 00007f5a65e88829",
    "RDX: 0000000000000000 RSI: 000055f7c631f2a0 RDI: 0000000000000003",
    "RBP: 000055f7c631f2a0 R08: 0000000000000000 R09: 0000000000000000",
    "R10: 0000000000000003 R11: 0000000000000246 R12: 0000000000000000",
    "R13: 0000000000000000 R14: 000055f7c63207b0 R15: 000055f7c631f2a0",
]


def dump_stack(k: "Kernel", frames: list[str] | None = None, user_regs: list[str] | None = None) -> list[str]:
    """dump_stack(): who and where (dump_stack_print_info()), then the call
    trace: ``frames`` (innermost first) when given, else the model stack of
    the current task; ``user_regs`` close a stack that came from user space."""
    task = k.current
    comm, pid = (task.comm, task.pid) if task else ("swapper/0", 0)
    mask = k.modules.tainted
    lines = [f"CPU: 0 UID: 0 PID: {pid} Comm: {comm} Tainted: {taint_string(k)} {k.version.release} #1 {PACKAGE_ID}"]
    if mask:
        names = [f"[{on}]={name}" for bit, (on, _, name) in enumerate(TAINT_FLAGS) if mask & (1 << bit)]
        lines.append("Tainted: " + ", ".join(names))
    lines += [f"Hardware name: {HARDWARE}", "Call Trace:", " <TASK>", " dump_stack_lvl+0x64/0x80"]
    if frames is None:
        frames = stack_trace(task.stack, task.kind is TaskKind.KTHREAD) if task else []
    lines += [f" {frame}" for frame in frames]
    lines += user_regs or []
    lines.append(" </TASK>")
    return lines


def print_dump_stack(k: "Kernel", frames: list[str] | None = None, user_regs: list[str] | None = None) -> None:
    for line in dump_stack(k, frames, user_regs):
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
