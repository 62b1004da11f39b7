"""Serving a mount: the model, its owner thread, and the FUSE loop.

As root (of the host, or of the user namespace of a rootless ``livefs run``)
the mount is shared with every user (``allow_other``); a normal user's mount is
theirs alone, since fusermount grants allow_other only with user_allow_other.
libfuse runs in the main thread so that its SIGINT/SIGTERM/SIGHUP handlers
end the loop and unmount cleanly; ``livefs umount`` (fusermount -u) ends it
the same way.  Whatever way the loop ends, the owner thread is stopped.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from livefs.fs import fuse_session
from livefs.fs.fuse_ops import MOUNT_OPTIONS, LivefsOperations
from livefs.fs.hostproc import host_pid_taken
from livefs.fs.root import build_root
from livefs.kernel.kernel import DEFAULT_CMDLINE, Kernel
from livefs.kernel.livepatch.consistency import ConsistencyModel
from livefs.kernel.tasks import RESERVED_PIDS
from livefs.kernel.version import KernelVersion

from .mounts import MountError
from .owner import ModelOwner


def _host_text(path: str, default: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def make_kernel(version: KernelVersion, cpus: int | None = None,
                model: ConsistencyModel = ConsistencyModel.HYBRID) -> Kernel:
    """A model machine whose clock starts at the host's uptime, so dmesg
    timestamps look like a real machine's."""
    ncpus = cpus or max(1, min(os.cpu_count() or 1, 64))
    try:
        pid_max = int(_host_text("/proc/sys/kernel/pid_max", "4194304"))
    except ValueError:
        pid_max = 4194304
    # the model shares the host's pid space: its pid_max, and none of the
    # pids host processes hold (they are tasks of the model too once they
    # touch the mount)
    return Kernel(version=version, ncpus=ncpus, cmdline=DEFAULT_CMDLINE, boot_ns=time.monotonic_ns(),
                  meminfo=lambda: _host_text("/proc/meminfo", ""), pid_base=RESERVED_PIDS, pid_max=pid_max,
                  pid_taken=host_pid_taken, consistency_model=model)


def serve(mountpoint: str, version: KernelVersion, scale: float = 1.0, cpus: int | None = None,
          model: ConsistencyModel = ConsistencyModel.HYBRID, fast_forward: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="livefs[%(process)d] %(levelname)s %(message)s")
    kernel = make_kernel(version, cpus, model)
    owner = ModelOwner(kernel, scale=scale, reboot=lambda: make_kernel(version, cpus, model),
                       fast_forward=fast_forward)
    owner.start()
    if owner.error is not None:
        raise owner.error
    ops = LivefsOperations(build_root(os.path.abspath(mountpoint)), owner)
    try:
        try:
            fuse_session.run(ops, mountpoint, ops.is_stream, allow_other=os.geteuid() == 0, **MOUNT_OPTIONS)
        except RuntimeError:
            # libfuse has printed why on stderr
            raise MountError(f"{mountpoint}: libfuse could not mount (see above)") from None
    finally:
        owner.stop()
    return 0
