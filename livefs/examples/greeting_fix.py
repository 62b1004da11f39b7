"""A worked example: a target module with a bug, and a livepatch that fixes it.

Build both stand-ins and load them (see README.rst):

    livefs modules build greeting_fix.py --name greeting -o greeting.ko
    livefs modules build greeting_fix.py --name greeting_fix -o greeting_fix.ko
"""

from livefs.catalog.api import Callbacks, Func, Function, ModuleDef, Object, Param, Patch


# -- the target: a module whose /proc/greeting has a typo --------------------------
def greeting_show(call):
    return "helo, world\n"


def greeting_init(ctx):
    ctx.pr_info("greeting_init")
    ctx.kernel.proc_create_single(ctx.module, "greeting", ctx.function("greeting_show"))
    return 0


def greeting_exit(ctx):
    ctx.kernel.remove_proc_entry("greeting")
    ctx.pr_info("greeting_exit")


greeting = ModuleDef(
    name="greeting",
    description="example target module",
    functions=[Function("greeting_show", greeting_show)],
    init=greeting_init,
    exit=greeting_exit,
)


# -- the fix: replace greeting_show, and say so in the callbacks ---------------------
def fixed_greeting_show(call):
    punctuation = "!" if call.module.param("excited") else "."
    return f"hello, world{punctuation}\n"


def pre_patch(ctx, obj):
    ctx.pr_info(f"pre_patch_callback: {obj.mod.name if obj.mod else 'vmlinux'}")
    return 0


greeting_fix = ModuleDef(
    name="greeting_fix",
    description="example livepatch for greeting",
    livepatch=True,
    params=[Param("excited", "bool", False, 0o644, "end the greeting with '!'")],
    patch=Patch(objs=[Object("greeting", [Func("greeting_show", fixed_greeting_show,
                                               new_name="livepatch_greeting_show")],
                             Callbacks(pre_patch=pre_patch))]),
)
