"""test_klp_state, test_klp_state2, test_klp_state3: the system-state API.

All three patch no function; their vmlinux callbacks take over the console
loglevel as a "system state" (id 1) and hand it on between cumulative patches.
Version 1 always owns the state; version 2 first looks for a previous owner.
"""

from __future__ import annotations

import errno

from livefs.kernel.moddef import Callbacks, ModuleDef, Object, Patch, State

from .api import ModuleContext
from .selftests import callback_info

CONSOLE_LOGLEVEL_STATE = 1
CONSOLE_LOGLEVEL_MOTORMOUTH = 15


def state_callbacks(takes_over: bool) -> Callbacks:
    """``takes_over``: consult klp_get_prev_state() (test_klp_state2) or not."""

    def prev(ctx: ModuleContext):
        return ctx.klp_get_prev_state(CONSOLE_LOGLEVEL_STATE) if takes_over else None

    def pre_patch(ctx: ModuleContext, obj) -> int:
        callback_info(ctx, "pre_patch_callback", obj)
        if prev(ctx) is not None:
            ctx.pr_info("allocate_loglevel_state: space to store console_loglevel already allocated")
            return 0
        state = ctx.klp_get_state(CONSOLE_LOGLEVEL_STATE)
        if state is None:
            return -errno.EINVAL
        state.data = {"loglevel": 0}
        ctx.pr_info("allocate_loglevel_state: allocating space to store console_loglevel")
        return 0

    def post_patch(ctx: ModuleContext, obj) -> None:
        callback_info(ctx, "post_patch_callback", obj)
        state = ctx.klp_get_state(CONSOLE_LOGLEVEL_STATE)
        previous = prev(ctx)
        if previous is not None:
            ctx.pr_info("fix_console_loglevel: taking over the console_loglevel change")
            state.data = previous.data
            return
        ctx.pr_info("fix_console_loglevel: fixing console_loglevel")
        state.data["loglevel"] = ctx.kernel.console_loglevel
        ctx.kernel.console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH

    def pre_unpatch(ctx: ModuleContext, obj) -> None:
        callback_info(ctx, "pre_unpatch_callback", obj)
        if prev(ctx) is not None:
            ctx.pr_info("restore_console_loglevel: passing the console_loglevel change back to the old livepatch")
            return
        ctx.pr_info("restore_console_loglevel: restoring console_loglevel")
        ctx.kernel.console_loglevel = ctx.klp_get_state(CONSOLE_LOGLEVEL_STATE).data["loglevel"]

    def post_unpatch(ctx: ModuleContext, obj) -> None:
        callback_info(ctx, "post_unpatch_callback", obj)
        if prev(ctx) is not None:
            ctx.pr_info("free_loglevel_state: keeping space to store console_loglevel")
            return
        ctx.pr_info("free_loglevel_state: freeing space for the stored console_loglevel")
        ctx.klp_get_state(CONSOLE_LOGLEVEL_STATE).data = None

    return Callbacks(pre_patch, post_patch, pre_unpatch, post_unpatch)


def _state_module(name: str, version: int, description: str) -> ModuleDef:
    return ModuleDef(
        name=name,
        description=description,
        author="Petr Mladek <pmladek@suse.com>",
        livepatch=True,
        patch=Patch(objs=[Object(None, [], state_callbacks(takes_over=version > 1))], replace=True,
                    states=[State(CONSOLE_LOGLEVEL_STATE, version)]),
    )


test_klp_state = _state_module("test_klp_state", 1, "Livepatch test: system state modification")
test_klp_state2 = _state_module("test_klp_state2", 2, "Livepatch test: system state modification")
test_klp_state3 = _state_module("test_klp_state3", 2, "Livepatch test: system state modification")

MODULES = [test_klp_state, test_klp_state2, test_klp_state3]
