"""What the state machine expects, worked out on its own.

A test whose expectations come from the code under test cannot catch that
code's bugs.  :class:`Shadow` therefore knows the patches only from what the
machine declared (the module declarations it loaded) and what the kernel
printed (``enabling patch``, ``starting patching transition``, ``patching
complete``, ``forcing remaining tasks``, …), and from those alone keeps its
own per-function stack of patch versions.  From it come:

- the errno a write to ``enabled`` must give (:meth:`Shadow.enabled_errno`);
- which versions of a function a task may run while a transition is in
  progress, and that one syscall never mixes the two sides of one patch
  (:meth:`Shadow.check_syscall`);
- at the completion of an unforced transition, the code it took away, which
  no task may still be in (:meth:`Shadow.taken_away`).

It reads task stacks (what ``/proc/PID/stack`` shows) and function results
(what the code returned), never the model's func_stack, patch_state rules or
``forbidden_functions``.
"""

from __future__ import annotations

import errno
import re
from typing import Any

import attrs

from livefs.kernel.moddef import ModuleDef, Patch

ORIG = "orig"
Target = tuple[str, str]  # (object, function); vmlinux for None

_LINE = re.compile(r"^livepatch: (?:enabling patch '(?P<enabling>[^']+)'"
                   r"|'(?P<start>[^']+)': starting (?P<start_dir>patching|unpatching) transition"
                   r"|'(?P<done>[^']+)': (?P<done_dir>patching|unpatching) complete"
                   r"|(?P<force>forcing remaining tasks to the patched state))$")


@attrs.define
class ShadowPatch:
    name: str
    targets: dict[Target, str]  # what it replaces -> the symbol of its replacement
    replace: bool
    nops: set[Target] = attrs.field(factory=set)
    active: bool = False  # its code is on the functions' stacks
    enabled: bool = False


class _Params:
    """Just enough of a module context for a declaration that reads its parameters."""

    def __init__(self, defn: ModuleDef, args: str) -> None:
        self.values: dict[str, Any] = {p.name: p.default for p in defn.params}
        for word in args.split():
            name, _, value = word.partition("=")
            if name in self.values:
                self.values[name] = int(value) if value.lstrip("-").isdigit() else value

    def param(self, name: str) -> Any:
        return self.values[name]


def declared(defn: ModuleDef, args: str = "") -> ShadowPatch:
    """The patch a livepatch module declares, as the machine loads it."""
    decl = defn.patch(_Params(defn, args)) if callable(defn.patch) else defn.patch
    assert isinstance(decl, Patch)
    targets = {(obj.name or "vmlinux", f.old_name): f.new_name for obj in decl.objs for f in obj.funcs}
    return ShadowPatch(defn.name, targets, decl.replace)


@attrs.define
class Shadow:
    declared: dict[str, ShadowPatch] = attrs.field(factory=dict)
    patches: list[ShadowPatch] = attrs.field(factory=list)  # klp_patches: load order
    transition: ShadowPatch | None = None
    enabling: bool = False
    forced: bool = False
    loaded: set[str] = attrs.field(factory=lambda: {"vmlinux"})
    # called with (patch, enabling, forced) when a transition completes,
    # before the shadow moves on: the machine checks the tasks there
    on_complete: Any = None

    # -- what the kernel printed ---------------------------------------------------------
    def log_line(self, text: str) -> None:
        m = _LINE.match(text)
        if m is None:
            return
        if m["enabling"]:
            patch = self.declared[m["enabling"]]
            if patch.replace:
                patch.nops = {t for p in self.patches for t in p.targets} - set(patch.targets)
            if patch not in self.patches:
                self.patches.append(patch)
        elif m["start"]:
            patch = self.declared[m["start"]]
            patch.active = True
            if self.transition is not patch:  # a new transition (a reversal keeps what force did)
                self.forced = False
            self.transition, self.enabling = patch, m["start_dir"] == "patching"
            patch.enabled = self.enabling
        elif m["force"]:
            self.forced = True
        else:
            patch = self.declared[m["done"]]
            started = self.transition is patch
            if started and self.on_complete is not None:
                self.on_complete(patch, self.enabling, self.forced)
            if m["done_dir"] == "patching":
                if patch.replace:
                    for other in self.patches:
                        if other is not patch:
                            other.active = other.enabled = False
                    self.patches = [patch]
                    patch.nops = set()
            else:
                patch.active = patch.enabled = False
                if patch in self.patches:
                    self.patches.remove(patch)
            self.transition, self.forced = None, False

    # -- the per-function stack of versions ------------------------------------------------
    def stack(self, target: Target) -> list[tuple[ShadowPatch, str]]:
        """(patch, the version it runs) of every patch on ``target``, oldest first."""
        if target[0] not in self.loaded:
            return []
        return [(p, p.name if target in p.targets else ORIG) for p in self.patches
                if p.active and (target in p.targets or target in p.nops)]

    def sides(self, target: Target) -> tuple[str, str] | None:
        """(the transition patch's version, the one below it) where the
        transition patch is on this function, else None.  Calls see both
        sides only when it is the newest there (the ftrace handler looks at
        the top of the func_stack alone)."""
        stack = self.stack(target)
        for i, (p, version) in enumerate(stack):
            if p is self.transition:
                return version, stack[i - 1][1] if i else ORIG
        return None

    def call_sides(self, target: Target) -> tuple[str, str] | None:
        stack = self.stack(target)
        return self.sides(target) if stack and stack[-1][0] is self.transition else None

    def top(self, target: Target) -> str:
        stack = self.stack(target)
        return stack[-1][1] if stack else ORIG

    def check_syscall(self, seen: dict[Target, str]) -> None:
        """The versions one syscall ran: each one the function's only version,
        or during a transition one of its two sides, and never both sides of
        the transition patch in one syscall."""
        side_seen: set[str] = set()
        for target, version in seen.items():
            sides = self.call_sides(target)
            if sides is None:
                assert version == self.top(target), f"{target} ran {version}, expected {self.top(target)}"
                continue
            new, old = sides
            assert version in sides, f"{target} ran {version} during '{self.transition.name}' ({new} or {old})"
            if new != old:
                side_seen.add("new" if version == new else "old")
        assert len(side_seen) <= 1, \
            f"one syscall ran old and new code of '{self.transition.name}': {sorted(seen.items())}"

    def taken_away(self, patch: ShadowPatch, enabling: bool) -> set[tuple[str, str]]:
        """(object, symbol) of the code that ``patch``'s completed transition takes away."""
        gone: set[tuple[str, str]] = set()
        for target in set(patch.targets) | patch.nops:
            sides = self.sides(target)
            if sides is None:
                continue
            new, old = sides
            version = old if enabling else new
            if enabling and new == old:
                continue
            if version == ORIG:
                if not enabling and target in patch.nops:
                    continue  # a nop runs the original: unpatching it takes nothing away
                gone.add(target)
            else:
                owner = self.declared[version]
                gone.add((owner.name, owner.targets[target]))
        return gone

    # -- what a write to enabled must give --------------------------------------------------
    def enabled_errno(self, name: str, value: bytes) -> int:
        """enabled_store() as the kernel's rules have it, from the shadow alone."""
        want = _kstrtobool(value)
        if want is None:
            return errno.EINVAL
        patch = self.declared[name]
        if patch.enabled == want:
            return errno.EINVAL
        if patch is self.transition:
            return 0  # a reversal
        if want:
            return errno.EINVAL  # a disabled patch is never enabled again
        return errno.EBUSY if self.transition is not None else 0


def _kstrtobool(data: bytes) -> bool | None:
    if not data:
        return None
    first, second = data[:1].lower(), data[1:2].lower()
    if first in (b"y", b"t", b"1"):
        return True
    if first in (b"n", b"f", b"0"):
        return False
    if first == b"o" and second in (b"n", b"f"):
        return second == b"n"
    return None
