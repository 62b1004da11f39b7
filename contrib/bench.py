#!/usr/bin/env python3
"""The benchmark of issue 13, in one run (a script, not a timed test).

Why this shape: a livefs figure alone says little on a shared 2-core machine,
so every figure is printed beside an anchor measured in the same run by the
same C client -- a procfs file (the kernel's own floor) and a tiny C libfuse3
filesystem serving a file at the same path depth (the FUSE floor) -- and the
ratios are what the goals of issue 13 are written in.

What it does:

1. builds ``contrib/bench/minifs.c`` (the C floor) and ``contrib/bench/client.c``
   (the one timing client) with ``cc`` and ``pkg-config fuse3`` into a
   temporary directory;
2. mounts minifs and a livefs mount (through the ``livefs`` CLI only, so it
   measures whatever FUSE adapter livefs has now), loads ``test_klp_livepatch``
   and ``test_klp_callbacks_busy`` (for a module parameter) with the insmod
   stand-in;
3. times read (open+read(4096)+close), cat-like (open+fstat+read to EOF+close)
   and write (open(O_TRUNC)+write+close), p50/p99, first unpinned, then with
   the client and both daemons pinned to one CPU;
4. times a spawned ``cat FILE`` and ``sh -c 'echo 0 > FILE'`` against the same
   on a procfs file;
5. unmounts, then times the model in-process: one transition retry pass over
   100,000 tasks with 20-deep stacks, and the state machine's step rate.

Usage (from the repository, with the venv's bin first on PATH)::

    python contrib/bench.py [--n N] [--spawn-n N] [--quick]

Both mounts are undone at the end, on an error or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "bench"
LP = "test_klp_livepatch"
PARAM_MOD = "test_klp_callbacks_busy"  # a plain module with one 0644 bool parameter (default false)
PROCFS = "/proc/{pid}/comm"  # the client's own comm: a procfs file it may read and write
OPS = ("read", "cat", "write")
OP_TITLES = {"read": "read", "cat": "cat-like", "write": "write"}

# issue 13's p50 figures (µs), measured before this benchmark existed: the anchors
ISSUE_P50 = {"procfs": {"read": 1.1, "cat": 1.2, "write": 0.9},
             "C fs": {"read": 11.9, "cat": 57.0, "write": 34.5},
             "enabled": {"read": 243.6, "cat": 289.0, "write": 258.0}}
GOAL_P50, AIM_P50, GOAL_P99, GOAL_SPAWN, GOAL_PASS_S, ANCHOR_STEPS = 2.0, 1.5, 3.0, 1.2, 1.0, 3800


@dataclass(frozen=True)
class Row:
    """One livefs file measured; the C floor serves the same relative paths
    (``{pid}`` as ``0``) so that both resolve as many path components."""

    name: str
    read: str            # relative to the mount; ``{pid}`` is the client's pid
    write: str | None    # None: the file is read-only

    def paths(self) -> list[str]:
        return [self.read] + ([self.write] if self.write else [])

    @staticmethod
    def twin(path: str) -> str:
        return path.replace("{pid}", "0")

    def depth(self) -> int:
        return len(Path(self.read).parts)


ROWS = (
    Row("enabled", f"sys/kernel/livepatch/{LP}/enabled", f"sys/kernel/livepatch/{LP}/force"),
    Row("parameter", f"sys/module/{PARAM_MOD}/parameters/block_transition",
        f"sys/module/{PARAM_MOD}/parameters/block_transition"),
    Row("patch_state", "proc/{pid}/patch_state", None),
)


class Q(NamedTuple):
    """p50 and p99 of one cell, in microseconds."""

    p50: float
    p99: float


@dataclass
class Rig:
    """What the measurements run against: the built programs and both mounts."""

    client: Path
    cfs: Path          # minifs mount point
    cfs_pid: int
    lfs: Path          # livefs mount point

    def livefs_pids(self) -> list[int]:
        return livefs_daemons(self.lfs)


# -- building and mounting -------------------------------------------------------------

def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """A command whose failure stops the benchmark with its own message."""
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise SystemExit(f"bench: {shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res


def build(out: Path) -> tuple[Path, Path]:
    """Compile minifs and the client; return their paths."""
    flags = run(["pkg-config", "--cflags", "--libs", "fuse3"]).stdout.split()
    minifs, client = out / "minifs", out / "client"
    run(["cc", "-O2", "-Wall", str(SOURCES / "minifs.c"), *flags, "-o", str(minifs)])
    run(["cc", "-O2", "-Wall", str(SOURCES / "client.c"), "-o", str(client)])
    return minifs, client


def wait_mounted(mnt: Path, alive: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if not alive() or time.monotonic() > deadline:
            raise SystemExit(f"bench: {mnt} did not come up")
        time.sleep(0.01)


@contextlib.contextmanager
def c_mount(minifs: Path, mnt: Path) -> Iterator[int]:
    """minifs on ``mnt`` serving every row's twin paths; yields its pid.  Its
    own session, so that Ctrl-C reaches us and we unmount it in order."""
    paths = [Row.twin(p) for row in ROWS for p in row.paths()]
    proc = subprocess.Popen([str(minifs), str(mnt), *dict.fromkeys(paths)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_mounted(mnt, lambda: proc.poll() is None)
        yield proc.pid
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def livefs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The livefs CLI of this Python: the only way the benchmark drives livefs."""
    return run([sys.executable, "-m", "livefs", *args], env=env)


@contextlib.contextmanager
def livefs_mount(mnt: Path, scratch: Path) -> Iterator[None]:
    """A livefs mount with the patch and the parameter module loaded (the
    insmod stand-in, as a user would), at rest (no transition running)."""
    livefs("mount", str(mnt))
    try:
        mods, tools = scratch / "mods", scratch / "tools"
        livefs("modules", "export", str(mods), LP, PARAM_MOD)
        livefs("tools", str(tools))
        env = dict(os.environ, LIVEFS_ROOT=str(mnt))
        for mod in (LP, PARAM_MOD):
            run([str(tools / "insmod"), str(mods / f"{mod}.ko")], env=env)
        livefs("wait", "--mount", str(mnt), "--timeout", "30")
        yield
    finally:
        res = subprocess.run([sys.executable, "-m", "livefs", "umount", str(mnt)], capture_output=True, text=True)
        if os.path.ismount(mnt):
            print(f"bench: livefs umount failed ({res.stderr.strip()}); lazy unmount", file=sys.stderr)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def livefs_daemons(mnt: Path) -> list[int]:
    """The processes serving the livefs mount: those whose command line names
    the mount point and livefs (pgrep on the mount point), and their children
    (in case an adapter forks helpers)."""
    target = os.fsencode(str(mnt.resolve()))
    found: list[int] = []
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if target in argv and any(b"livefs" in a for a in argv):
            found.append(int(entry.name))
    found += [pid for pid, ppid in parents.items() if ppid in found and pid not in found]
    return found


# -- pinning ---------------------------------------------------------------------------

def threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


@contextlib.contextmanager
def pinned(pids: list[int], cpu: int) -> Iterator[None]:
    """Every thread of ``pids`` on ``cpu`` (as ``taskset -a -p``); restored after.
    Threads made later inherit the pin from the thread that makes them."""
    saved: dict[int, set[int]] = {}
    try:
        for tid in (t for pid in pids for t in threads(pid)):
            with contextlib.suppress(ProcessLookupError):
                saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {cpu})
        yield
    finally:
        for tid, cpus in saved.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


# -- measuring ---------------------------------------------------------------------------

def client(rig: Rig, args: list[str], cpu: int | None) -> dict[str, Q]:
    """Run the C client (under ``taskset -c cpu`` when pinned); its lines by target."""
    cmd = [str(rig.client), *args]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out: dict[str, Q] = {}
    for line in run(cmd).stdout.splitlines():
        target, p50, p99 = line.split("\t")
        out[target] = Q(float(p50), float(p99))
    return out


def cells(rig: Rig, n: int, cpu: int | None) -> dict[tuple[str, str, str], Q]:
    """Every (fs, row, op) cell: fs is procfs, C fs or livefs.  One client run
    per column, which interleaves its targets in blocks of n/10 (at most 100)."""
    result: dict[tuple[str, str, str], Q] = {}
    for op in OPS:
        targets = {("procfs", "procfs"): PROCFS}
        for row in ROWS:
            path = row.read if op != "write" else row.write
            if path is not None:
                targets[("C fs", row.name)] = str(rig.cfs / Row.twin(path))
                targets[("livefs", row.name)] = str(rig.lfs / path)
        got = client(rig, ["-n", str(n), op, *targets.values()], cpu)
        for (fs, row_name), path in targets.items():
            result[(fs, row_name, op)] = got[path]
    return result


# -- printing ------------------------------------------------------------------------------

def fmt_cell(q: Q | None) -> str:
    return f"{'—':>17}" if q is None else f"{q.p50:>8.1f} /{q.p99:>7.1f}"


def fmt_ratio(a: Q | None, b: Q | None) -> str:
    if a is None or b is None:
        return f"{'—':>17}"
    return f"{a.p50 / b.p50:>7.1f}x /{a.p99 / b.p99:>6.1f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def print_legend(n: int) -> None:
    print("Files (the C fs serves the same relative paths, {pid} as 0, so lookups walk as many components):")
    print(f"  procfs       {PROCFS}  (the client's own; write: its comm)")
    for row in ROWS:
        write = ("read-only" if row.write is None else "write: the same" if row.write == row.read
                 else f"write: {Path(row.write).name}")
        print(f"  {row.name:<12} {row.read}  (depth {row.depth()}; {write})")
    print(f"Ops: read = open+read(4096)+close; cat-like = open+fstat+read(128 KiB) to EOF+close; "
          f"write = open(O_WRONLY|O_TRUNC)+write(\"0\\n\")+close.  n={n} per cell after n/10 warm-up, "
          f"the cells of a column interleaved in blocks of n/10 (≤100).")


def print_table(title: str, c: dict[tuple[str, str, str], Q]) -> None:
    print(f"\n{title}: p50 / p99 in µs")
    print(f"{'':<26}" + "".join(f"{OP_TITLES[op]:>19}" for op in OPS))
    print(f"{'procfs':<26}" + "".join(f"  {fmt_cell(c[('procfs', 'procfs', op)])}" for op in OPS))
    for row in ROWS:
        for fs in ("C fs", "livefs"):
            print(f"{fs + ' ' + row.name:<26}" + "".join(f"  {fmt_cell(c.get((fs, row.name, op)))}" for op in OPS))
        print(f"{'  livefs / C fs':<26}" + "".join(
            f"  {fmt_ratio(c.get(('livefs', row.name, op)), c.get(('C fs', row.name, op)))}" for op in OPS))


def print_goals(c: dict[tuple[str, str, str], Q]) -> None:
    """One line per livefs cell: the figure, its ratio to the C floor, the goal."""
    print(f"Goals: p50 ≤{GOAL_P50:g}x the C fs (aim {AIM_P50:g}x), p99 ≤{GOAL_P99:g}x its p99")
    for row in ROWS:
        for op in OPS:
            ours, floor = c.get(("livefs", row.name, op)), c.get(("C fs", row.name, op))
            if ours is None or floor is None:
                continue
            r50, r99 = ours.p50 / floor.p50, ours.p99 / floor.p99
            was = ISSUE_P50.get(row.name, {}).get(op)
            anchor = f"; issue 13: {was:g} µs = {was / ISSUE_P50['C fs'][op]:.1f}x" if was else ""
            print(f"  livefs {row.name:<11} {OP_TITLES[op]:<8} p50 {ours.p50:7.1f} µs = {r50:5.1f}x C fs "
                  f"{floor.p50:.1f} µs (goal ≤{GOAL_P50:g}x{anchor}) {verdict(r50 <= GOAL_P50)}; "
                  f"p99 {ours.p99:.1f} µs = {r99:.1f}x (goal ≤{GOAL_P99:g}x) {verdict(r99 <= GOAL_P99)}")


def spawn_section(rig: Rig, n: int) -> None:
    """Whole commands, as shell scripts run them: livefs against procfs (the
    goal) and against the C floor (for scale), interleaved by the client.
    Unpinned."""
    enabled, force = ROWS[0].read, ROWS[0].write
    assert force is not None
    commands = {"spawn-cat": ("cat FILE >/dev/null", enabled), "spawn-echo": ("sh -c 'echo 0 > FILE'", force)}
    print(f"\nSpawned commands, unpinned, n={n} (posix_spawn+waitpid in the client): p50 / p99 in µs")
    print(f"  files: procfs /proc/self/comm; C fs and livefs: {enabled} (cat), {force} (echo)")
    print(f"{'':<24}{'procfs':>17}  {'C fs':>17}  {'livefs':>17}  {'livefs / procfs':>17}")
    verdicts = []
    for op, (title, rel) in commands.items():
        where = {"procfs": "/proc/self/comm", "C fs": str(rig.cfs / rel), "livefs": str(rig.lfs / rel)}
        got = client(rig, ["-n", str(n), op, *where.values()], None)
        r = {fs: got[path] for fs, path in where.items()}
        print(f"{title:<24}{fmt_cell(r['procfs'])}  {fmt_cell(r['C fs'])}  {fmt_cell(r['livefs'])}  "
              f"{fmt_ratio(r['livefs'], r['procfs'])}")
        ratio = r["livefs"].p50 / r["procfs"].p50
        anchor = "; issue 13: 1.9x" if op == "spawn-cat" else ""
        verdicts.append(f"  spawned {title} on livefs p50 {r['livefs'].p50:.0f} µs = {ratio:.2f}x procfs "
                        f"{r['procfs'].p50:.0f} µs (goal ≤{GOAL_SPAWN:g}x{anchor}) {verdict(ratio <= GOAL_SPAWN)}")
    print("\n".join(verdicts))


# -- the model, in-process -----------------------------------------------------------------

# functions the tasks sleep in: all in vmlinux, none patched by test_klp_livepatch (which
# patches cmdline_proc_show), so a stack check must look at every frame to clear a task
STACK = ["do_syscall_64", "__x64_sys_wait4", "kernel_wait4", "do_wait", "ksys_read", "vfs_read", "seq_read_iter",
         "proc_reg_read_iter", "kernfs_fop_read_iter", "ksys_write", "vfs_write", "kernfs_fop_write_iter",
         "__x64_sys_epoll_wait", "do_epoll_wait", "ep_poll", "process_one_work", "cond_resched", "msleep",
         "__schedule", "schedule"]
PID_MAX_LIMIT = 4 * 1024 * 1024  # include/linux/threads.h on 64-bit


def transition_pass(ntasks: int, repeats: int) -> tuple[float, float, list[float]]:
    """Seconds to build the tasks, to enable the patch (its first pass
    included), and for each timed retry pass (klp_try_complete_transition).

    The model in virtual time, as tests/test_livepatch_model.py builds it: one
    kthread sleeps in the patched function so the transition stays open; the
    other tasks sleep 20 frames deep in code the patch leaves alone, so every
    frame of every stack is checked.  Before each timed pass they are put back
    to the state klp_start_transition() leaves them in (initial state,
    TIF_PATCH_PENDING), so the pass has all of them to check and switch."""
    from livefs.catalog import find
    from livefs.kernel.kernel import Kernel
    from livefs.kernel.livepatch.transition import initial_state, klp_try_complete_transition
    from livefs.kernel.tasks import Task, TaskKind

    k = Kernel(ncpus=1)
    if hasattr(k.tasks, "pid_max"):  # room for the tasks, as echo 4194304 > /proc/sys/kernel/pid_max
        k.tasks.pid_max = max(k.tasks.pid_max, PID_MAX_LIMIT)
    f = k.vmlinux_func
    blocker = k.tasks.add(Task(k.tasks.new_pid(), "blocker", TaskKind.KTHREAD, ppid=2,
                               stack=[f("kthread"), f("cmdline_proc_show"), f("schedule")]))
    t0 = time.perf_counter()
    stack = [f(name) for name in STACK]
    sleepers = [k.tasks.add(Task(k.tasks.new_pid(), "sleeper", TaskKind.USER, stack=list(stack)))
                for _ in range(ntasks)]
    t1 = time.perf_counter()
    with k.syscall(k.task_for(k.tasks.new_pid(), "insmod")) as loader:
        assert k.load_module(find(LP)) == 0, "insmod failed"
    t2 = time.perf_counter()
    klp = k.livepatch
    assert klp.transition_patch is not None and blocker.patch_pending, "the blocker did not hold the transition"
    passes = []
    for _ in range(repeats):
        for task in sleepers:
            task.patch_state, task.patch_pending = initial_state(klp), True
        t = time.perf_counter()
        assert not klp_try_complete_transition(klp)
        passes.append(time.perf_counter() - t)
        assert not any(task.patch_pending for task in sleepers), "a sleeper was not switched"
    del loader
    return t1 - t0, t2 - t1, passes


def machine_rate(examples: int) -> tuple[int, int, float]:
    """(steps, examples, seconds) of LivepatchMachine run as tests run it: the
    livefs-ci profile (derandomized, no database), ``examples`` examples.
    Steps are counted by an invariant, which hypothesis checks once after
    the machine is made and once after every step."""
    from hypothesis import settings
    from hypothesis.stateful import invariant, run_state_machine_as_test

    import livefs.testing.plugin  # noqa: F401  (registers the livefs-ci profile)
    from livefs.testing.machine import LivepatchMachine

    counts = {"checks": 0, "machines": 0}

    class Counted(LivepatchMachine):
        def __init__(self) -> None:
            super().__init__()
            counts["machines"] += 1

        @invariant()
        def count_step(self) -> None:
            counts["checks"] += 1

    profile = settings(settings.get_profile("livefs-ci"), max_examples=examples)
    t = time.perf_counter()
    run_state_machine_as_test(Counted, settings=profile)
    seconds = time.perf_counter() - t
    return counts["checks"] - counts["machines"], counts["machines"], seconds


def model_section(ntasks: int, repeats: int, examples: int) -> None:
    print("\nModel (in-process, virtual time, no FUSE)")
    build_s, enable_s, passes = transition_pass(ntasks, repeats)
    one = statistics.median(passes)
    print(f"  transition retry pass over {ntasks:,} tasks with {len(STACK)}-deep stacks, none in patched code: "
          f"{one:.2f} s (goal ≤{GOAL_PASS_S:g} s) {verdict(one <= GOAL_PASS_S)}")
    print(f"    (median of {repeats}: {', '.join(f'{p:.2f}' for p in passes)} s; the enable with its first pass "
          f"{enable_s:.2f} s; making the tasks {build_s:.2f} s)")
    steps, machines, seconds = machine_rate(examples)
    print(f"  state machine (LivepatchMachine, livefs-ci profile, derandomized, {examples} examples): {steps:,} steps "
          f"in {machines} runs in {seconds:.1f} s = {steps / seconds:,.0f} steps/s "
          f"(anchor: about {ANCHOR_STEPS:,} steps/s in issue 13; keep it there or better)")


# -- main ------------------------------------------------------------------------------------

def pin_cpu() -> int:
    """The CPU to pin to: the last one we may run on."""
    return max(os.sched_getaffinity(0))


def on_signal(signum: int, _frame: object) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the mounts are undone."""
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="timed iterations per file cell (default 5000)")
    ap.add_argument("--spawn-n", type=int, default=300, help="timed iterations per spawn cell (default 300)")
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks in the model transition pass")
    ap.add_argument("--examples", type=int, default=100, help="state machine examples (default: livefs-ci's 100)")
    ap.add_argument("--quick", action="store_true", help="n=500, spawn-n=50, one model pass, 20 examples")
    args = ap.parse_args()
    if args.quick:
        args.n, args.spawn_n, args.examples = 500, 50, 20
    args.repeats = 1 if args.quick else 3
    return args


def header(args: argparse.Namespace) -> None:
    uname = os.uname()
    print(f"livefs benchmark (issue 13), {time.strftime('%Y-%m-%d %H:%M %Z')}, {uname.sysname} {uname.release}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} "
          f"(others' work on the machine shows in every figure)")
    print(f"Options: --n {args.n} --spawn-n {args.spawn_n} --tasks {args.tasks} --examples {args.examples}"
          f"{' --quick' if args.quick else ''}")


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (cmd &)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for tool in ("cc", "pkg-config", "fusermount3", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} not found")
    header(args)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="livefs-bench-") as tmp:
        work = Path(tmp)
        minifs, client_bin = build(work)
        (work / "cfs").mkdir()
        (work / "lfs").mkdir()
        with c_mount(minifs, work / "cfs") as cfs_pid, livefs_mount(work / "lfs", work):
            rig = Rig(client_bin, work / "cfs", cfs_pid, work / "lfs")
            print_legend(args.n)
            c = cells(rig, args.n, None)
            print_table("Unpinned", c)
            print_goals(c)
            print_goals(pinned_cells(rig, args.n, pin_cpu()))
            spawn_section(rig, args.spawn_n)
    model_section(args.tasks, args.repeats, args.examples)
    print(f"\n(whole run {time.monotonic() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
    return 0


def pinned_cells(rig: Rig, n: int, cpu: int) -> dict[tuple[str, str, str], Q]:
    """The same cells with the client and both daemons on ``cpu``: no
    cross-CPU wake-ups, so what is left is the work itself."""
    daemons = rig.livefs_pids()
    with pinned([rig.cfs_pid, *daemons], cpu):
        c = cells(rig, n, cpu)
    print_table(f"Pinned to CPU {cpu} (client, minifs pid {rig.cfs_pid}, livefs pid "
                f"{', '.join(map(str, daemons)) or 'not found: unpinned'})", c)
    return c


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbench: interrupted; mounts undone", file=sys.stderr)
        sys.exit(130)
