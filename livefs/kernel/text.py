"""Kernel text: the places ftrace and jump labels rewrite, behind one lock.

Every traceable function has an entry call site that is a ``nop`` until some
ftrace ops hooks it, then a ``call``; every ``static_branch_*()`` use is a jump
site that is a nop or a jump depending on its key.  Both engines change code
only through :meth:`Text.poke` while holding :attr:`Text.lock` (the kernel's
``text_mutex``), so they can never patch text at the same time; a poke without
the lock is a bug and raises.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import attrs

from .symbols import KFunc

if TYPE_CHECKING:
    from .jump_label import StaticKey


class TextLockError(RuntimeError):
    pass


@attrs.define(eq=False)
class JumpSite:
    """One ``static_branch_likely/unlikely(&key)`` in ``func``."""

    func: KFunc
    key: "StaticKey"
    enabled: bool = False  # what the code at the site currently says

    def __repr__(self) -> str:
        return f"<JumpSite {self.func.name}:{self.key.name}={'jmp' if self.enabled else 'nop'}>"


@attrs.define(eq=False)
class Text:
    holder: str | None = None
    call_sites: dict[KFunc, str] = attrs.field(factory=dict)  # "nop" | "call"
    pokes: int = 0

    @contextlib.contextmanager
    def lock(self, who: str) -> Iterator[None]:
        if self.holder is not None:
            raise TextLockError(f"text_mutex taken by {who} while held by {self.holder}")
        self.holder = who
        try:
            yield
        finally:
            self.holder = None

    def _check(self) -> None:
        if self.holder is None:
            raise TextLockError("text poked without text_mutex")

    def poke_call_site(self, func: KFunc, state: str) -> None:
        self._check()
        if self.call_sites.get(func, "nop") != state:
            self.call_sites[func] = state
            self.pokes += 1

    def poke_jump_site(self, site: JumpSite, enabled: bool) -> None:
        self._check()
        if site.enabled != enabled:
            site.enabled = enabled
            self.pokes += 1

    def call_site(self, func: KFunc) -> str:
        return self.call_sites.get(func, "nop")
