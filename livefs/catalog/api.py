"""The public API for declaring modules and livepatches in Python.

A livepatch module is a :class:`ModuleDef` with ``livepatch=True`` and a
:class:`Patch` of :class:`Object` s of :class:`Func` s -- the same shape as
``struct klp_patch`` in C.  Replacement bodies and callbacks are plain Python
functions; see README.rst for a worked example.

Kernel threads: ``ctx.kthread_run(fn, name, *args)`` (``fn`` a function the
module declares) returns its :class:`Task`; inside it, and in anything it
calls (replacement functions too), ``call.msleep(ms)``,
``call.schedule_timeout(ms)`` and ``call.kthread_should_stop()``; from
anywhere ``ctx.kthread_stop(task)`` and ``ctx.wake_up_process(task)``.
"""

from livefs.kernel.kernel import CallContext
from livefs.kernel.moddef import (Callbacks, Func, Function, ModuleDef, Object, Param, Patch,
                                  State, StaticKeyDef, Symtab)
from livefs.kernel.modules import ModuleContext, ModuleState
from livefs.kernel.printk import KERN_DEBUG, KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING
from livefs.kernel.tasks import Task

__all__ = [
    "CallContext", "Callbacks", "Func", "Function", "ModuleDef", "Object", "Param", "Patch",
    "State", "StaticKeyDef", "Symtab", "ModuleContext", "ModuleState", "KERN_DEBUG", "KERN_ERR", "KERN_INFO", "KERN_NOTICE",
    "KERN_WARNING", "Task",
]
