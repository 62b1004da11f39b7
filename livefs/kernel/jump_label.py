"""Static keys and jump labels (kernel/jump_label.c).

A key's ``enabled`` count decides its sites: the 0->1 step patches every site
of the key to the jump, 1->0 patches them back, always under the text lock.
Sites live in vmlinux or in modules; a module arriving links its sites to the
keys they use (foreign keys included) and patches them to the key's current
value; a module going unlinks them, and keys it owns go with it.
``static_key_enable``/``disable`` only move between 0 and 1 and warn when the
count says someone uses inc/dec on the same key, as the kernel does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .symbols import VMLINUX, KFunc
from .text import JumpSite

if TYPE_CHECKING:
    from .kernel import Kernel


@attrs.define(eq=False)
class StaticKey:
    name: str
    owner: str = VMLINUX
    default: bool = False  # DEFINE_STATIC_KEY_TRUE / _FALSE
    enabled: int = 0
    sites: list[JumpSite] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.enabled = 1 if self.default else 0

    @property
    def value(self) -> bool:
        return self.enabled > 0


@attrs.define(eq=False)
class JumpLabels:
    k: "Kernel"
    keys: dict[str, StaticKey] = attrs.field(factory=dict)

    def define(self, name: str, owner: str = VMLINUX, default: bool = False) -> StaticKey:
        key = StaticKey(name, owner, default)
        self.keys[name] = key
        return key

    def key(self, name: str) -> StaticKey | None:
        return self.keys.get(name)

    def add_site(self, func: KFunc, key: StaticKey) -> JumpSite:
        site = JumpSite(func, key)
        key.sites.append(site)
        with self.k.text.lock("jump_label"):
            self.k.text.poke_jump_site(site, key.value)
        return site

    def _patch(self, key: StaticKey) -> None:
        with self.k.text.lock("jump_label"):
            for site in key.sites:
                self.k.text.poke_jump_site(site, key.value)

    def site_value(self, func: KFunc, key_name: str) -> bool:
        key = self.keys.get(key_name)
        site = next((s for s in key.sites if s.func is func), None) if key else None
        if site is None:
            raise LookupError(f"{func.name} has no static branch on {key_name}")
        return site.enabled

    # -- the API ---------------------------------------------------------------------
    def inc(self, key: StaticKey) -> bool:
        if key.enabled >= (1 << 31) - 1:
            return False  # refuses to overflow (v6.2+)
        key.enabled += 1
        if key.enabled == 1:
            self._patch(key)
        return True

    def dec(self, key: StaticKey) -> None:
        if key.enabled <= 0:
            self.k.warn("jump label: negative count!", "kernel/jump_label.c:311")
            return
        key.enabled -= 1
        if key.enabled == 0:
            self._patch(key)

    def enable(self, key: StaticKey) -> None:
        if key.enabled > 0:
            if key.enabled != 1:
                self.k.warn(f"static_key_enable({key.name}) with count {key.enabled}", "kernel/jump_label.c:209")
            return
        key.enabled = 1
        self._patch(key)

    def disable(self, key: StaticKey) -> None:
        if key.enabled != 1:
            if key.enabled != 0:
                self.k.warn(f"static_key_disable({key.name}) with count {key.enabled}", "kernel/jump_label.c:240")
            return
        key.enabled = 0
        self._patch(key)

    # -- modules -----------------------------------------------------------------------
    def module_coming(self, module: str, uses: list[tuple[KFunc, str]], owned: list[tuple[str, bool]]) -> int:
        """Define the module's keys, then link each of its sites to its key
        (its own or a foreign one) and patch it to the key's value."""
        for name, default in owned:
            self.define(name, module, default)
        for func, key_name in uses:
            key = self.keys.get(key_name)
            if key is None:
                self.module_going(module)
                return -2  # -ENOENT: an unresolved key symbol
            self.add_site(func, key)
        return 0

    def module_going(self, module: str) -> None:
        for name in [n for n, key in self.keys.items() if key.owner == module]:
            del self.keys[name]
        for key in self.keys.values():
            key.sites = [s for s in key.sites if s.func.obj != module]

    def render(self) -> str:
        out = [f"{'KEY':<32} {'OWNER':<24} {'DEFAULT':<7} {'COUNT':>5}  SITES"]
        for key in self.keys.values():
            sites = ", ".join(f"{s.func.name}{'' if s.func.obj == VMLINUX else f' [{s.func.obj}]'}="
                              f"{'jmp' if s.enabled else 'nop'}" for s in key.sites) or "-"
            out.append(f"{key.name:<32} {key.owner:<24} {str(key.default).lower():<7} {key.enabled:>5}  {sites}")
        return "\n".join(out) + "\n"
