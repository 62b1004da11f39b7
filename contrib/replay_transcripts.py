#!/usr/bin/env python3
"""Replay the real-kernel transcripts under livefs and compare them line by line.

    contrib/replay_transcripts.py [--oracle DIR] [--version 6.12] [--keep DIR] [-v] [SCENARIO...]

tests/transcripts/scenarios/NAME.sh are our own scenario scripts; they were run
on a real kernel by the oracle (../shared/oracle, a stock Debian 6.12 kernel
under qemu, with the scenarios handed in through its EXTRA_DIR) and what they
printed is tests/transcripts/VERSION/NAME.txt.  For each recorded scenario this
runs the same script under

    livefs run --kernel-version VERSION --cpus 2 -- SCENARIO

with what the script expects around it: the oracle's helpers (its lib.sh, and
its sysio compiled from the oracle's own source into a scratch directory at
replay time; nothing of the oracle is committed here) under $ORACLE, which the
scenarios source as ``${ORACLE:-/oracle}/lib.sh``, and stand-ins of the
oracle's modules (livefs/catalog/oracle.py, ``livefs modules export``) at
/lib/modules/$(uname -r)/extra, where the oracle's lib.sh looks for them.

Both transcripts are then normalised for machine identity only (every rule in
NORMALISERS says why it is legitimate) and compared; for each scenario it
prints the lines recorded, the lines of the recording that match (in order,
aligned with difflib so that one extra line does not shift the rest) and the
first differing lines.  Exit status 0 when every scenario matches fully.

This is a tool, not a test: it needs root (or user namespaces), gcc and the
oracle's sources, and it never boots qemu.  To record again, see
tests/transcripts/README.rst.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRANSCRIPTS = REPO / "tests" / "transcripts"
DEFAULT_ORACLE = REPO.parent / "shared" / "oracle"
ORACLE_MODULES = ["lp_cmdline", "lp_cmdline2", "lp_replace", "lp_callbacks", "lp_busy_target", "lp_busy"]

# Sourced by the scenario as $ORACLE/lib.sh: what the oracle's /init does
# before a scenario, then the oracle's own lib.sh (copied at replay time).
PRELUDE = r"""# replay prelude (contrib/replay_transcripts.py): what the oracle's /init
# and rootfs give a scenario, provided inside `livefs run`.
export LANG=C LC_ALL=C TERM=dumb
ORACLE_BOOT_CMDLINE="$(cat /proc/cmdline)"; export ORACLE_BOOT_CMDLINE
__extra="/lib/modules/$(uname -r)/extra"
if ! mountpoint -q "$__extra"; then
    if [ ! -d "$__extra" ]; then
        # only inside the namespace-local overlay/tmpfs livefs run lays over
        # /lib/modules (never create anything on the host's own disk)
        case "$(findmnt -n -o FSTYPE --target "/lib/modules/$(uname -r)" 2>/dev/null)" in
            overlay|tmpfs) mkdir -p "$__extra" ;;
            *) echo "replay: $__extra does not exist and is not namespace-local" >&2; exit 97 ;;
        esac
    fi
    mount --bind "$ORACLE/ko" "$__extra" || exit 97
fi
unset __extra
"""


def _lib_sh(oracle: Path, scratch: Path) -> str:
    lib = (oracle / "vm" / "lib.sh").read_text()
    # the helpers call /oracle/sysio; ours is in the scratch directory
    return PRELUDE + lib.replace("/oracle/", "$ORACLE/")


def prepare(oracle: Path, scratch: Path, version: str) -> Path:
    env_dir = scratch / "oracle"
    (env_dir / "ko").mkdir(parents=True)
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(env_dir / "sysio"), str(oracle / "vm" / "sysio.c")],
                   check=True)
    (env_dir / "lib.sh").write_text(_lib_sh(oracle, scratch))
    subprocess.run([sys.executable, "-m", "livefs", "modules", "export", str(env_dir / "ko"), *ORACLE_MODULES],
                   check=True, stdout=subprocess.DEVNULL)
    return env_dir


def replay(scenario: Path, env_dir: Path, version: str, timeout: int) -> str:
    """Run the scenario under livefs run; its output, as the oracle's ttyS1 would have it."""
    # Run the script by its path (not ``bash SCRIPT``) so its comm is NAME.sh
    # as in the VM, where /init runs ./NAME.sh.
    work = env_dir.parent / "scenarios"
    work.mkdir(exist_ok=True)
    script = work / scenario.name
    shutil.copy(scenario, script)
    script.chmod(0o755)
    env = dict(os.environ, ORACLE=str(env_dir), LANG="C", LC_ALL="C", TERM="dumb")
    cmd = [sys.executable, "-m", "livefs", "run", "--kernel-version", version, "--cpus", "2", "--", f"./{script.name}"]
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        out, rc = proc.stdout.decode("utf-8", "replace"), proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = (exc.stdout or b"").decode("utf-8", "replace"), "timeout"
    return out + f"ORACLE_SCENARIO_DONE scenario={scenario.stem} rc={rc}\n"


# ---------------------------------------------------------------- normalising
# Each rule: (why it is legitimate, function over the list of lines).

def _header_identity(lines: list[str]) -> list[str]:
    """The header's ``kernel:`` line is ``uname -a`` (host name, build string,
    date of the kernel build) and ``boot cmdline:`` the boot loader's command
    line: the identity of the machine, not of livepatch.  /proc/cmdline prints
    the same boot command line while it is unpatched."""
    cmdline = next((ln[len("boot cmdline: "):] for ln in lines if ln.startswith("boot cmdline: ")), None)
    out = []
    for ln in lines:
        if ln.startswith("kernel: "):
            ln = "kernel: <uname -a>"
        elif cmdline and cmdline in ln:
            ln = ln.replace(cmdline, "<boot cmdline>")
        out.append(ln)
    return out


def _release(lines: list[str]) -> list[str]:
    """``uname -r`` appears in module paths (/lib/modules/RELEASE/extra): the
    release string of whichever kernel booted, the VM's or the host's."""
    return [re.sub(r"/lib/modules/[^/ ]+/", "/lib/modules/<release>/", ln) for ln in lines]


def _boot_log(lines: list[str]) -> list[str]:
    """The footer's full dmesg starts with the boot log of the machine (BIOS,
    ACPI, drivers: hundreds of lines no model has).  What the scenario caused
    was echoed in the body as ``dmesg|`` lines, so the full dmesg is compared
    from the first message the scenario caused on; the DONE line is the VM
    init's (with its run time), not the scenario's."""
    out, i = [], 0
    first_msg = next((ln.split("dmesg| ", 1)[1] for ln in lines if ln.startswith("  dmesg| ")), None)
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("ORACLE_SCENARIO_DONE"):
            i += 1
            continue
        if ln.startswith("=================== full dmesg"):
            out.append(ln)
            rest = lines[i + 1:]
            strip = [re.sub(r"^\[[ 0-9.]+\] ", "", x) for x in rest]
            start = next((j for j, x in enumerate(strip) if first_msg is not None and x == first_msg), len(rest))
            out += [x for x in rest[start:] if not x.startswith("ORACLE_SCENARIO_DONE")]
            break
        out.append(ln)
        i += 1
    return out


def _timestamps(lines: list[str]) -> list[str]:
    """printk timestamps (``[   12.345678]``, seconds since that machine
    booted) and ``ls -l`` dates (the wall clock) are when, not what."""
    out = []
    for ln in lines:
        ln = re.sub(r"^\[ *[0-9]+\.[0-9]+\] ", "[<time>] ", ln)
        ln = re.sub(r"\b[A-Z][a-z]{2} [ 0-9]\d (\d\d:\d\d|\d{4}) ", "<date> ", ln)
        out.append(ln)
    return out


def _pids(lines: list[str]) -> list[str]:
    """Process ids are handed out by whichever machine runs the script (the
    VM's init is pid 1 with ~60 kthreads; under livefs the host's processes
    and the model's own tasks)."""
    out = []
    for ln in lines:
        # pid 1 is the machine's init: the oracle's /init script in the VM,
        # whatever the host runs under livefs; its name is identity too
        ln = re.sub(r"\bpid 1 \([^)]*\)", "pid 1 (<init>)", ln)
        ln = re.sub(r"\bpid (\d+)", "pid <pid>", ln)
        out.append(ln)
    return out


def _task_counts(lines: list[str]) -> list[str]:
    """The pstate histogram counts every task of the machine (``cat
    /proc/[0-9]*/patch_state | uniq -c``): how many processes and kthreads a
    machine runs is its identity.  The values (-1/0/1) and their order stay."""
    out, in_hist = [], False
    for ln in lines:
        if ln.startswith("--- /proc/*/patch_state histogram"):
            in_hist = True
        elif in_hist and re.match(r"^ +\d+ -?\d+$", ln):
            ln = re.sub(r"^ +\d+ ", "  <n> ", ln)
        else:
            in_hist = False
        out.append(ln)
    return out


def _durations(lines: list[str]) -> list[str]:
    """How many 100 ms polls a wait took (lib.sh's ``after ~N ms``, the
    modules' ``returns after N ms``) is wall-clock time on that machine: under
    TCG a guest runs many times slower than the host.  Whether the wait ended
    (``not pending`` / ``STILL pending``) is kept."""
    return [re.sub(r"after ~?\d+ ms", "after <N> ms", ln) for ln in lines]


_REGISTER_LINE = re.compile(r"^(  dmesg\| )?(RIP|Code|RSP|RAX|RDX|RBP|R10|R13): ")


def _dump_stack_identity(lines: list[str]) -> list[str]:
    """A dump_stack() shows the machine it runs on: its CPU number, the
    hardware name (QEMU's BIOS), the user-space registers and code bytes at
    the syscall, each frame's offset/size inside this particular kernel
    build, and the ``? func`` guesses: stale return addresses left on that
    stack by whatever ran before.  The reliable frames' names stay."""
    out = []
    for ln in lines:
        if re.match(r"^(  dmesg\| )? \? ", ln):
            continue  # "? func+off": a stale return address the unwinder found on that stack, not the call path
        if _REGISTER_LINE.match(ln):
            ln = _REGISTER_LINE.match(ln).group(0) + "<registers>"
        elif "Hardware name: " in ln:
            ln = ln.split("Hardware name: ")[0] + "Hardware name: <hardware>"
        else:
            ln = re.sub(r"\bCPU: \d+ UID: \d+ PID: \d+ ", "CPU: <cpu> UID: 0 PID: <pid> ", ln)
            ln = re.sub(r"\+0x[0-9a-f]+/0x[0-9a-f]+\b", "+<off>/<size>", ln)
            ln = re.sub(r"(Tainted: .*?)\s+\S+ #\d+ .*$", r"\1 <release and build>", ln)
        out.append(ln)
    return out


def _kmsg_records(lines: list[str]) -> list[str]:
    """A /dev/kmsg record starts ``LEVEL,SEQ,USEC,FLAGS;``: SEQ counts every
    message since that machine booted (its boot log is hundreds of lines on
    the VM) and USEC is the time since boot; the level and flags stay.  The
    first record of the buffer is the machine's boot banner (``Linux version
    ...``), whose length is that of the banner.  The byte count of a read that
    returned a record counts the digits of SEQ and USEC too."""
    out = []
    for ln in lines:
        ln = re.sub(r'^(\s*read\(\d+\))=\d+ (data="\d+,\d+,\d+,)', r'\1=<n> \2', ln)
        ln = re.sub(r'data="(\d+),\d+,\d+,', r'data="\1,<seq>,<usec>,', ln)
        if ';Linux version ' in ln:
            ln = re.sub(r'=\d+ data="(.*?);Linux version .*"$', r'=<n> data="\1;<boot banner>"', ln)
        out.append(ln)
    return out


NORMALISERS = [_boot_log, _header_identity, _release, _timestamps, _pids, _task_counts, _durations,
               _dump_stack_identity, _kmsg_records]


def normalise(text: str) -> list[str]:
    lines = text.replace("\r", "").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for rule in NORMALISERS:
        lines = rule(lines)
    return lines


def compare(expected: list[str], actual: list[str]) -> tuple[int, list[str]]:
    sm = difflib.SequenceMatcher(a=expected, b=actual, autojunk=False)
    matching = sum(b.size for b in sm.get_matching_blocks())
    diff = list(difflib.unified_diff(expected, actual, "real 6.12", "livefs", n=1, lineterm=""))
    return matching, diff


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help="scenario names (default: every recorded one)")
    ap.add_argument("--oracle", type=Path, default=DEFAULT_ORACLE, help="the oracle's directory (lib.sh, sysio.c)")
    ap.add_argument("--version", default="6.12", help="the recorded kernel version (a directory of transcripts)")
    ap.add_argument("--keep", type=Path, help="also write each normalised pair (NAME.real, NAME.livefs) here")
    ap.add_argument("--diff-lines", type=int, default=20, help="how many differing lines to print per scenario")
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args(argv)

    recorded = TRANSCRIPTS / args.version
    names = args.scenarios or sorted(p.stem for p in recorded.glob("*.txt") if not p.name.endswith(".console.txt"))
    if not (args.oracle / "vm" / "lib.sh").exists():
        print(f"replay: no oracle at {args.oracle} (--oracle DIR)", file=sys.stderr)
        return 2
    total_rec = total_match = 0
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="livefs-replay-") as tmp:
        env_dir = prepare(args.oracle, Path(tmp), args.version)
        for name in names:
            expected = normalise((recorded / f"{name}.txt").read_text(errors="replace"))
            actual = normalise(replay(TRANSCRIPTS / "scenarios" / f"{name}.sh", env_dir, args.version,
                                      args.timeout))
            matching, diff = compare(expected, actual)
            total_rec += len(expected)
            total_match += matching
            pct = 100.0 * matching / max(1, len(expected))
            print(f"== {name}: {len(expected)} lines recorded, {matching} matching ({pct:.0f}%), "
                  f"{len(actual)} lines under livefs")
            if diff:
                all_ok = False
                for ln in diff[2:2 + args.diff_lines]:
                    print("   " + ln)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / f"{name}.real").write_text("\n".join(expected) + "\n")
                (args.keep / f"{name}.livefs").write_text("\n".join(actual) + "\n")
    print(f"== total: {total_rec} lines recorded, {total_match} matching "
          f"({100.0 * total_match / max(1, total_rec):.0f}%)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
