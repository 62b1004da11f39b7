"""The tool stand-ins (kmod's insmod, rmmod, modprobe, modinfo, lsmod and
util-linux's dmesg) as executables in a directory of the caller's choosing.

They are written from the installed package at the moment they are needed,
each a launcher bound to the Python that runs livefs, so they work from a
wheel in any venv and never depend on a source checkout.  Whoever puts them
first on PATH gets the mock's tools; the host's are never a fallback.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from livefs.shim import TOOLS

LAUNCHER = """#!{python}
# livefs stand-in for {tool}: talks to the mock below $LIVEFS_ROOT
import sys
from livefs.shim import main
sys.exit(main({tool!r}, sys.argv[1:]))
"""


def write_tools(directory: Path) -> list[Path]:
    """Write one launcher per tool into ``directory`` (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for tool in sorted(TOOLS):
        path = directory / tool
        # whole or not at all: another livefs may be running these right now
        tmp = directory / f".{tool}.{os.getpid()}"
        tmp.write_text(LAUNCHER.format(python=sys.executable, tool=tool))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


@functools.lru_cache(maxsize=None)
def tools_dir() -> Path:
    """The stand-ins in this user's livefs runtime directory, written afresh
    for the Python running now (for mounts used outside ``livefs run``).  One
    directory per Python and livefs installation: two installs side by side
    (a venv and a checkout) must not run each other's stand-ins."""
    import hashlib

    import livefs
    from livefs.runtime.paths import runtime_dir
    key = hashlib.sha1(f"{sys.executable}\0{livefs.__file__}".encode()).hexdigest()[:12]
    directory = runtime_dir() / f"bin-{key}"
    write_tools(directory)
    return directory
