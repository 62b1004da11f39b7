"""Whether a normal user can have a namespace of their own here, and if not, why.

``livefs run`` as a normal user enters a new user namespace (mapping the user
to root inside it) and a mount namespace.  Distributions switch that off in a
few known ways; each gets the exact setting that turns it back on.
"""

from __future__ import annotations

import subprocess


def _sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def userns_problem() -> str | None:
    """None if ``unshare --user --map-root-user --mount`` works, else one line saying why."""
    if _sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return ("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); "
                "enable them with: sysctl -w kernel.unprivileged_userns_clone=1, or run as root")
    if _sysctl("/proc/sys/user/max_user_namespaces") == "0":
        return ("user namespaces are disabled (user.max_user_namespaces=0); enable them with: "
                "sysctl -w user.max_user_namespaces=15000, or run as root")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True,
                           text=True)
    if probe.returncode == 0:
        return None
    if _sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts unprivileged user namespaces "
                "(kernel.apparmor_restrict_unprivileged_userns=1); allow them with: sysctl -w "
                "kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile with 'userns,' "
                "for python3, or run as root")
    why = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
    return f"cannot create a user namespace ({why}); run as root, or enable unprivileged user namespaces"
