#!/usr/bin/env python3
"""Replay the real-kernel transcripts under livefs and compare them line by line.

    contrib/replay_transcripts.py [--oracle DIR] [--version 6.12] [--keep DIR] [--known FILE] [SCENARIO...]

tests/transcripts/scenarios/NAME.sh are our own scenario scripts; they were run
on a real kernel by the oracle (../shared/oracle, a stock Debian 6.12 kernel
under qemu, with the scenarios handed in through its EXTRA_DIR) and what they
printed is tests/transcripts/VERSION/NAME.txt.  For each recorded scenario this
runs the same script under

    livefs run --kernel-version VERSION --cpus 2 -- SCENARIO

with what the script expects around it: the helpers it sources as
``${ORACLE:-/oracle}/lib.sh`` and the ``sysio`` probe, from
tests/transcripts/support (our own, written to print in the recordings'
format), or with ``--oracle DIR`` the oracle's originals (its vm/lib.sh, and
vm/sysio.c compiled into a scratch directory at replay time, which needs gcc;
nothing of the oracle is committed here); and stand-ins of the oracle's
modules (livefs/catalog/oracle.py, ``livefs modules export``) at
/lib/modules/$(uname -r)/extra, where the helpers look for them.

Both transcripts are then normalised for machine identity and wall-clock
timing only (every rule in NORMALISERS says why it is legitimate) and
compared; for each scenario it prints the lines recorded, the lines of the
recording that match (in order, aligned with difflib so that one extra line
does not shift the rest) and the differing lines.  With ``--known FILE``
(tests/transcripts/known-differences.txt) the differences are checked against
that list as tests/test_transcripts.py does: the exit status is 0 when every
difference is listed and every listed one occurs; without it, 0 when every
scenario matches fully.  ``--write-known`` rewrites the list from this run,
keeping the reason of every difference still listed (new ones get ``TODO``).

This needs root (or user namespaces) and never boots qemu.  To record again,
see tests/transcripts/README.rst.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRANSCRIPTS = REPO / "tests" / "transcripts"
SUPPORT = TRANSCRIPTS / "support"
KNOWN = TRANSCRIPTS / "known-differences.txt"
DEFAULT_ORACLE = REPO.parent / "shared" / "oracle"
ORACLE_MODULES = ["lp_cmdline", "lp_cmdline2", "lp_replace", "lp_callbacks", "lp_busy_target", "lp_busy"]

# Sourced by the scenario as $ORACLE/lib.sh, before the helpers themselves:
# what the oracle's /init does before a scenario, provided inside `livefs run`.
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


def prepare(scratch: Path, oracle: Path | None = None) -> Path:
    """Lay out $ORACLE in ``scratch``: lib.sh (the prelude, then the helpers),
    sysio and the module stand-ins in ko/.  The helpers are ours
    (tests/transcripts/support) unless ``oracle`` names the oracle's
    directory, whose vm/lib.sh and vm/sysio.c are used instead."""
    env_dir = scratch / "oracle"
    (env_dir / "ko").mkdir(parents=True)
    if oracle is None:
        lib = (SUPPORT / "lib.sh").read_text()
        # our sysio runs on this interpreter, isolated and without site
        # packages: it needs only the standard library, and starts fast
        sysio = (SUPPORT / "sysio").read_text().split("\n", 1)[1]
        (env_dir / "sysio").write_text(f"#!{sys.executable} -IS\n{sysio}")
        (env_dir / "sysio").chmod(0o755)
    else:
        # the oracle's helpers call /oracle/sysio; ours is in the scratch directory
        lib = (oracle / "vm" / "lib.sh").read_text().replace("/oracle/", "$ORACLE/")
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(env_dir / "sysio"),
                        str(oracle / "vm" / "sysio.c")], check=True)
    (env_dir / "lib.sh").write_text(PRELUDE + lib)
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
    env.pop("SYSIO", None)
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
        # (a day of one digit is padded by ls, unless a scenario squeezed the blanks)
        ln = re.sub(r"\b[A-Z][a-z]{2} (?:[ 0-9]\d|\d) (\d\d:\d\d|\d{4}) ", "<date> ", ln)
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


# a kernel log line as the body echoes it, or as the full dmesg has it (timestamp normalised)
_LOG = r"(  dmesg\| |\[<time>\] )"
_REGISTER_LINE = re.compile(rf"^{_LOG}?(RIP|Code|RSP|RAX|RDX|RBP|R10|R13): ")


def _dump_stack_identity(lines: list[str]) -> list[str]:
    """A dump_stack() shows the machine it runs on: its CPU number, the
    hardware name (QEMU's BIOS), the user-space registers and code bytes at
    the syscall, each frame's offset/size inside this particular kernel
    build, and the ``? func`` guesses: stale return addresses left on that
    stack by whatever ran before.  The reliable frames' names stay.  The
    same in the body's ``dmesg|`` lines and in the full dmesg.  A
    /proc/PID/stack line (``[<0>] func+0xOFF/0xSIZE``) keeps its offsets:
    it shows a model task (a host process's is the host kernel's, which no
    scenario reads), and the model gives the offsets and sizes of the very
    build the recordings come from."""
    out = []
    for ln in lines:
        if re.match(rf"^{_LOG}? \? ", ln):
            continue  # "? func+off": a stale return address the unwinder found on that stack, not the call path
        if _REGISTER_LINE.match(ln):
            ln = _REGISTER_LINE.match(ln).group(0) + "<registers>"
        elif "Hardware name: " in ln:
            ln = ln.split("Hardware name: ")[0] + "Hardware name: <hardware>"
        elif not ln.startswith("  [<0>] "):
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


_WORKER_LINE = re.compile(rf"^{_LOG}(lp_busy_target: original|lp_busy: patched) lp_busy_target_wait (entered|returns)")
_PARAM_WRITE = re.compile(r"^sysio (w|wn|wrep) /sys/module/lp_busy(_target)?/parameters/")
_FULL_DMESG = "=================== full dmesg"


def _snapshot_after(lines: list[str], i: int) -> tuple[int, int] | None:
    """The kmsg snapshot that follows the first ``[rc=N]`` line at or after
    ``i`` (the ``dmesg|`` lines right after it) as (start, end), or None when
    the body ends first."""
    while i < len(lines) and not lines[i].startswith("  [rc="):
        if lines[i].startswith(_FULL_DMESG):
            return None
        i += 1
    if i == len(lines):
        return None
    end = i + 1
    while end < len(lines) and lines[end].startswith("  dmesg| "):
        end += 1
    return i + 1, end


def _worker_snapshot(lines: list[str]) -> list[str]:
    """lp_busy_target's kthread (and lp_busy's replacement it runs) notices a
    write to a parameter (hold, hold_max_ms) when its current msleep(100)
    (msleep(50) when idle) ends, up to 100 ms after the write returned, and
    logs ``... lp_busy_target_wait entered|returns``.  Whether the write's
    own kmsg snapshot or the next one reports that line is how fast the
    machine runs the helpers (the TCG guest: nearly always the write's own;
    a host: either).  So worker lines that open the snapshot after a
    parameter write's snapshot are moved to the end of the write's (latest
    write first, so a run of writes hands them back to its first)."""
    lines = list(lines)
    writes = [i for i, ln in enumerate(lines) if _PARAM_WRITE.match(ln)]
    for i in reversed(writes):
        own = _snapshot_after(lines, i)
        nxt = own and _snapshot_after(lines, own[1])
        if not nxt:
            continue
        start, end = nxt
        moved = start
        while moved < end and _WORKER_LINE.match(lines[moved]):
            moved += 1
        chunk = lines[start:moved]
        del lines[start:moved]
        lines[own[1]:own[1]] = chunk
    return lines


def _worker_iterations(lines: list[str]) -> list[str]:
    """While hold is set, the worker re-enters lp_busy_target_wait() each
    time hold_max_ms runs out (params: every 300 ms, then 100 ms), and a
    hold cleared and set again within one msleep is never seen: how many
    iterations a stretch of the script spans is wall-clock time on that
    machine.  A ``returns`` of the worker followed by its next line, an
    ``entered`` of the same function, is one such iteration boundary; both
    are dropped (in the body and in the full dmesg, each on its own), so the
    first entry and the last return of every held stretch stay, where they
    were logged."""
    full = next((i for i, ln in enumerate(lines) if ln.startswith(_FULL_DMESG)), len(lines))
    return _drop_restarts(lines[:full]) + _drop_restarts(lines[full:])


def _drop_restarts(lines: list[str]) -> list[str]:
    out: list[str] = []
    workers: list[int] = []  # where in out the worker lines kept so far are
    for ln in lines:
        m = _WORKER_LINE.match(ln)
        if m and m.group(3) == "entered" and workers:
            prev = _WORKER_LINE.match(out[workers[-1]])
            if prev.group(3) == "returns" and prev.group(2) == m.group(2):
                del out[workers.pop()]
                continue
        if m:
            workers.append(len(out))
        out.append(ln)
    return out


_WAIT_NOTE = re.compile(r"^# (transition of (\S+) not pending|/sys/kernel/livepatch/(\S+) gone) after ")


def _transition_completion(lines: list[str]) -> list[str]:
    """A transition that nothing blocks completes at its first retry, 0.75 to
    1.75 s after it started (round_jiffies_relative(HZ) on whole seconds of
    jiffies), and logs ``livepatch: 'P': (un)patching complete`` (after the
    patch's post-(un)patch callbacks).  Whether the command that started it
    and the kmsg snapshots after it took longer than that is the machine's
    speed (the TCG guest often did; a host rarely does); the scenario waits
    for it with wait_transition_done/wait_gone, which return only once it
    completed.  So those lines, wherever they were reported since the
    previous wait, are compared as reported by the first snapshot after the
    wait's note, at its start."""
    lines = list(lines)
    i = floor = 0
    while i < len(lines):
        m = _WAIT_NOTE.match(lines[i])
        if not m:
            i += 1
            continue
        patch = m.group(2) or m.group(3)
        done = re.compile(rf"^  dmesg\| (livepatch: '{re.escape(patch)}': (un)?patching complete"
                          rf"|{re.escape(patch)}: post_(un)?patch callback: )")
        start = i
        while start > floor and not _WAIT_NOTE.match(lines[start - 1]) and not lines[start - 1].startswith("====="):
            start -= 1
        snap = _snapshot_after(lines, i)
        moved = [ln for ln in lines[start:i] if done.match(ln)]
        if snap is None or not moved:
            i += 1
            continue
        lines[snap[0]:snap[0]] = moved
        lines[start:i] = [ln for ln in lines[start:i] if not done.match(ln)]
        i += 1 - len(moved)
        # the moved lines now end at snap[0]: a later wait never moves them again
        floor = snap[0]
    return lines


_SAMPLE_NOTE = re.compile(r"^# after ~(\d+) s: transition=")


def _signal_round(lines: list[str]) -> list[str]:
    """``livepatch: signaling remaining tasks`` is logged at the transition's
    15th retry: 14 retries after the first, which comes 0.75 to 1.75 s after
    the start (whole seconds of jiffies), so 14.75 to 15.75 s after the
    insmod began.  The signals scenario samples every 3 s after the insmod
    and its kmsg returned (``# after ~15 s``, ``~18 s``), so which of those
    two snapshots reports it is the phase of the jiffies.  Reported right
    after the ~18 s note, it is compared as reported after the ~15 s one."""
    lines = list(lines)
    notes = [i for i, ln in enumerate(lines) if _SAMPLE_NOTE.match(ln)]
    for a, b in zip(notes, notes[1:]):
        if (_SAMPLE_NOTE.match(lines[a]).group(1), _SAMPLE_NOTE.match(lines[b]).group(1)) != ("15", "18"):
            continue
        if b == a + 1 and b + 1 < len(lines) and lines[b + 1] == "  dmesg| livepatch: signaling remaining tasks":
            lines[b], lines[b + 1] = lines[b + 1], lines[b]
    return lines


NORMALISERS = [_boot_log, _header_identity, _release, _timestamps, _pids, _task_counts, _durations,
               _dump_stack_identity, _kmsg_records, _worker_snapshot, _worker_iterations, _transition_completion,
               _signal_round]


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


# ---------------------------------------------------------------- differences
# A difference is (recorded line, livefs line): a recorded line livefs printed
# otherwise, or (None, line) / (line, None) for a line only one of them has.

Difference = tuple[str | None, str | None]


def differences(expected: list[str], actual: list[str]) -> list[Difference]:
    """The lines that differ, from difflib's alignment: a replaced stretch
    pairs its lines in order, the rest of the longer side stands alone."""
    out: list[Difference] = []
    sm = difflib.SequenceMatcher(a=expected, b=actual, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        rec, liv = expected[i1:i2], actual[j1:j2]
        n = min(len(rec), len(liv))
        out += list(zip(rec[:n], liv[:n]))
        out += [(x, None) for x in rec[n:]] + [(None, y) for y in liv[n:]]
    return out


@dataclass
class Known:
    """One entry of the known-differences list."""

    scenario: str
    reason: str
    diff: Difference
    lineno: int


# The list's format (tests/transcripts/known-differences.txt): "#" comments;
# "[SCENARIO] REASON" opens a group; each line under it is one difference,
# "RECORDED -> LIVEFS", each side a JSON string or "-" for no line.  A line
# that differs N times is listed N times.
_GROUP = re.compile(r"^\[([\w.-]+)\] (\S.*)$")


def _side(text: str, pos: int, what: str) -> tuple[str | None, int]:
    if text.startswith("-", pos):
        return None, pos + 1
    try:
        value, end = json.JSONDecoder().raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not a JSON string or -: {exc}") from None
    if not isinstance(value, str):
        raise ValueError(f"{what}: not a string")
    return value, end


def parse_known(text: str) -> list[Known]:
    out: list[Known] = []
    group: tuple[str, str] | None = None
    for n, ln in enumerate(text.splitlines(), 1):
        if not ln.strip() or ln.startswith("#"):
            continue
        m = _GROUP.match(ln)
        if m:
            group = (m.group(1), m.group(2))
            continue
        where = f"known differences, line {n}"
        if group is None or not ln.startswith("  "):
            raise ValueError(f"{where}: expected '[SCENARIO] REASON' or an indented difference")
        rec, pos = _side(ln, 2, where)
        if not ln.startswith(" -> ", pos):
            raise ValueError(f"{where}: expected ' -> ' between the recorded and the livefs line")
        liv, pos = _side(ln, pos + 4, where)
        if pos != len(ln) or (rec is None and liv is None):
            raise ValueError(f"{where}: expected RECORDED -> LIVEFS and nothing after")
        out.append(Known(group[0], group[1], (rec, liv), n))
    return out


def format_known(entries: list[Known], preamble: str) -> str:
    def side(x: str | None) -> str:
        return "-" if x is None else json.dumps(x)

    out, group = [preamble.rstrip("\n"), ""], None
    for e in entries:
        if (e.scenario, e.reason) != group:
            if group is not None:
                out.append("")
            group = (e.scenario, e.reason)
            out.append(f"[{e.scenario}] {e.reason}")
        out.append(f"  {side(e.diff[0])} -> {side(e.diff[1])}")
    return "\n".join(out) + "\n"


def check_known(scenario: str, found: list[Difference], known: list[Known]) -> tuple[list[Difference], list[Known]]:
    """The differences of ``scenario`` not listed, and the listed ones of
    ``scenario`` that did not occur (each listed entry stands for one
    occurrence)."""
    listed = collections.defaultdict(list)
    for e in known:
        if e.scenario == scenario:
            listed[e.diff].append(e)
    unlisted = []
    for d in found:
        if listed[d]:
            listed[d].pop(0)
        else:
            unlisted.append(d)
    gone = sorted((e for es in listed.values() for e in es), key=lambda e: e.lineno)
    return unlisted, gone


# ---------------------------------------------------------------- running


@dataclass
class Result:
    name: str
    expected: list[str]
    actual: list[str]
    matching: int
    diffs: list[Difference]


def recorded_scenarios(version: str) -> list[str]:
    return sorted(p.stem for p in (TRANSCRIPTS / version).glob("*.txt") if not p.name.endswith(".console.txt"))


def run_scenario(name: str, env_dir: Path, version: str, timeout: int = 300) -> Result:
    """Replay one scenario; both transcripts normalised, and how they compare."""
    expected = normalise((TRANSCRIPTS / version / f"{name}.txt").read_text(errors="replace"))
    actual = normalise(replay(TRANSCRIPTS / "scenarios" / f"{name}.sh", env_dir, version, timeout))
    matching, _ = compare(expected, actual)
    return Result(name, expected, actual, matching, differences(expected, actual))


def show_difference(d: Difference) -> str:
    return f"{'-' if d[0] is None else json.dumps(d[0])} -> {'-' if d[1] is None else json.dumps(d[1])}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help="scenario names (default: every recorded one)")
    ap.add_argument("--oracle", type=Path, nargs="?", const=DEFAULT_ORACLE,
                    help=f"use the oracle's own lib.sh and sysio.c from DIR (default DIR: {DEFAULT_ORACLE}) "
                         "instead of tests/transcripts/support")
    ap.add_argument("--version", default="6.12", help="the recorded kernel version (a directory of transcripts)")
    ap.add_argument("--keep", type=Path, help="also write each normalised pair (NAME.real, NAME.livefs) here")
    ap.add_argument("--known", type=Path, nargs="?", const=KNOWN,
                    help=f"check the differences against this list (default: {KNOWN.relative_to(REPO)})")
    ap.add_argument("--write-known", action="store_true",
                    help="rewrite the --known list from this run (reasons kept, new ones TODO)")
    ap.add_argument("--diff-lines", type=int, default=20, help="how many differing lines to print per scenario")
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args(argv)

    names = args.scenarios or recorded_scenarios(args.version)
    if args.oracle and not (args.oracle / "vm" / "lib.sh").exists():
        print(f"replay: no oracle at {args.oracle}", file=sys.stderr)
        return 2
    if args.write_known and not args.known:
        args.known = KNOWN
    known = parse_known(args.known.read_text()) if args.known and args.known.exists() else []
    total_rec = total_match = 0
    ok = True
    results = []
    with tempfile.TemporaryDirectory(prefix="livefs-replay-") as tmp:
        env_dir = prepare(Path(tmp), args.oracle)
        for name in names:
            res = run_scenario(name, env_dir, args.version, args.timeout)
            results.append(res)
            total_rec += len(res.expected)
            total_match += res.matching
            pct = 100.0 * res.matching / max(1, len(res.expected))
            print(f"== {name}: {len(res.expected)} lines recorded, {res.matching} matching ({pct:.0f}%), "
                  f"{len(res.actual)} lines under livefs")
            if args.known:
                unlisted, gone = check_known(name, res.diffs, known)
                ok = ok and not unlisted and not gone
                shown = [f"   not listed: {show_difference(d)}" for d in unlisted]
                shown += [f"   listed (line {e.lineno}) but did not occur: {show_difference(e.diff)}" for e in gone]
            else:
                ok = ok and not res.diffs
                shown = ["   " + show_difference(d) for d in res.diffs]
            for ln in shown[:args.diff_lines]:
                print(ln)
            if len(shown) > args.diff_lines:
                print(f"   ... {len(shown) - args.diff_lines} more")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / f"{name}.real").write_text("\n".join(res.expected) + "\n")
                (args.keep / f"{name}.livefs").write_text("\n".join(res.actual) + "\n")
    print(f"== total: {total_rec} lines recorded, {total_match} matching "
          f"({100.0 * total_match / max(1, total_rec):.0f}%)")
    if args.write_known:
        _write_known(args.known, known, results)
    return 0 if ok else 1


def _write_known(path: Path, known: list[Known], results: list[Result]) -> None:
    """Rewrite the list: the scenarios replayed get this run's differences
    (a difference keeps the reason it was listed with; new ones are TODO),
    the others keep their entries."""
    text = path.read_text() if path.exists() else ""
    head = []
    for ln in text.splitlines(True):
        if not ln.startswith("#"):
            break
        head.append(ln)
    preamble = "".join(head) or "# known differences\n"
    replayed = {r.name for r in results}
    entries = [e for e in known if e.scenario not in replayed]
    for res in results:
        reasons = collections.defaultdict(list)
        for e in known:
            if e.scenario == res.name:
                reasons[e.diff].append(e.reason)
        for d in res.diffs:
            reason = reasons[d].pop(0) if reasons[d] else "TODO"
            entries.append(Known(res.name, reason, d, 0))
    order = {name: i for i, name in enumerate(sorted({e.scenario for e in entries}))}
    entries.sort(key=lambda e: (order[e.scenario], e.reason))  # stable: the run's order within a group
    path.write_text(format_known(entries, preamble))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
