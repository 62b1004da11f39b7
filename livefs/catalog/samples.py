"""samples/livepatch modules."""

from .api import CallContext, Func, ModuleDef, Object, Patch


def _livepatch_cmdline_proc_show(call: CallContext) -> str:
    return "this has been live patched\n"


livepatch_sample = ModuleDef(
    name="livepatch_sample",
    description="Livepatch sample module",
    livepatch=True,
    patch=Patch(objs=[Object(None, [Func("cmdline_proc_show", _livepatch_cmdline_proc_show)])]),
)

MODULES = [livepatch_sample]
