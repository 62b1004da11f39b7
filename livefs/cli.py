"""``livefs`` command line: mount, umount, run, modules."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from livefs import __version__
from livefs.kernel.livepatch.consistency import ConsistencyModel
from livefs.kernel.version import KernelVersion

from .runtime.mounts import (MountError, canonical, check_alive, fuse_device_problem, is_livefs_mount, start_daemon,
                             stop_daemon)
from .runtime.paths import PathError, mountpoints_dir, sweep_stale_runs

STATUS_FILE = "sys/kernel/debug/livefs/transition"


def _version(text: str) -> str:
    try:
        KernelVersion.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.01 <= value <= 1000:
        raise argparse.ArgumentTypeError("scale must be between 0.01 and 1000")
    return value


def _cpus(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError("cpus must be a whole number from 1 to 64")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 1e7:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel-version", type=_version, default="mainline",
                   help="kernel ABI to model: mainline (default), 6.12, 6.1, ...")
    p.add_argument("--scale", type=_scale, default=1.0,
                   help="model seconds per wall-clock second (default 1: the kernel's own cadence)")
    p.add_argument("--cpus", type=_cpus, default=None,
                   help="CPUs of the model machine (default: as many as the host, at most 64)")
    p.add_argument("--fast-forward", action=argparse.BooleanOptionalAction, default=None,
                   help="when a transition has switched every task and only waits for its next retry, jump "
                        "model time to that retry (off for mount and run, on for selftest)")
    p.add_argument("--consistency-model", choices=[m.value for m in ConsistencyModel], default="hybrid",
                   help="how tasks switch: hybrid (the kernel's, default); kgraft, kpatch and immediate "
                        "exist to show why the kernel does what it does")


def _model_args(args: argparse.Namespace) -> list[str]:
    """What to pass on to a daemon for the model options of ``_common``."""
    return ["--kernel-version", args.kernel_version, "--scale", str(args.scale),
            *(["--cpus", str(args.cpus)] if args.cpus else []),
            *(["--fast-forward"] if args.fast_forward else []),
            *(["--consistency-model", args.consistency_model] if args.consistency_model != "hybrid" else [])]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="livefs", description="A sysfs-faithful FUSE mock of Linux livepatch.")
    ap.add_argument("--version", action="version", version=f"livefs {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount the mock (as root for every user; as a normal user for you only)")
    m.add_argument("dir", nargs="?", help="empty directory to mount on (default: mnt/default in the runtime "
                   "directory: $XDG_RUNTIME_DIR/livefs, /run/livefs for root)")
    m.add_argument("--foreground", action="store_true", help="serve in this process until unmounted")
    _common(m)

    u = sub.add_parser("umount", help="unmount a livefs mount and stop its daemon")
    u.add_argument("dir")

    r = sub.add_parser("run", help="run a command with the mock at the real paths (private mount namespace)")
    r.add_argument("--mount", dest="mount_dir", help="use this existing livefs mount instead of a fresh one")
    r.add_argument("--verbose", action="store_true",
                   help="say on stderr how the command's module syscalls reach the model")
    _common(r)
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    w = sub.add_parser("wait", help="block until no transition is in progress (exit 1 on timeout)")
    w.add_argument("--mount", dest="mount_dir", help="livefs mount to watch (default as for status)")
    w.add_argument("--timeout", type=_seconds, default=None, help="give up after S seconds (default: never)")

    sub.add_parser("demo", help="mount, load a livepatch, watch it switch, unload it, unmount (bash, cat, echo)")

    t = sub.add_parser("tools", help="write the stand-ins for insmod, rmmod, modprobe, modinfo, lsmod and "
                       "dmesg into DIR (put DIR first on PATH, set LIVEFS_ROOT to the mount)")
    t.add_argument("dir")

    st = sub.add_parser("status", help="patches, the transition in progress and the tasks that block it")
    st.add_argument("--mount", dest="mount_dir", help="livefs mount to show (default: the real paths inside "
                    "livefs run, else $LIVEFS_ROOT, else mountpoints/default)")
    st.add_argument("--watch", action="store_true", help="refresh until interrupted")
    st.add_argument("--json", action="store_true", help="the same facts as JSON")
    st.add_argument("--interval", type=_scale, default=0.5, help="seconds between refreshes (default 0.5)")

    tl = sub.add_parser("timeline", help="draw the last (or the running) transition: one lane per task over time")
    tl.add_argument("--mount", dest="mount_dir", help="livefs mount to read (default as for status)")
    tl.add_argument("-o", "--output", help="write a picture to FILE.svg (or FILE.png, with matplotlib) "
                    "instead of text on stdout")
    tl.add_argument("--back", type=int, default=0, metavar="N",
                    help="the transition N before the last one (the mount keeps the last 8)")
    tl.add_argument("--lanes", type=int, default=40, metavar="N",
                    help="at most N lanes: past that, tasks are grouped by how they switched and only the "
                         "stragglers keep a lane (default 40)")
    tl.add_argument("--width", type=int, default=72, help="columns of the text form (default 72)")

    se = sub.add_parser("selftest", help="run every test-*.sh in DIR under livefs run and report KTAP")
    se.add_argument("dir")
    se.add_argument("-t", "--test", dest="tests", action="append", default=[],
                    help="run only this script (a name such as test-livepatch.sh; may be repeated)")
    se.add_argument("--timeout", type=_seconds, default=300.0, help="seconds per script (default 300)")
    se.add_argument("--no-export", action="store_true",
                    help="do not write test_modules/ stand-ins and helpers into DIR when they are missing")
    _common(se)

    mo = sub.add_parser("modules", help="the module catalog")
    msub = mo.add_subparsers(dest="modules_command", required=True)
    ex = msub.add_parser("export", help="write a stand-in DIR/<mod>.ko for every catalog module")
    ex.add_argument("dir")
    ex.add_argument("names", nargs="*", help="only these modules")
    msub.add_parser("list", help="list catalog modules")
    bd = msub.add_parser("build", help="build a .ko stand-in from a Python file that declares a module")
    bd.add_argument("file")
    bd.add_argument("-o", "--output", help="where to write the .ko (default: <module name>.ko beside FILE)")
    bd.add_argument("--name", help="which module, when FILE declares several")
    eg = msub.add_parser("example", help="write the example livepatch source (greeting and greeting_fix) to FILE")
    eg.add_argument("file")
    hp = msub.add_parser("helpers", help="write stand-ins for the selftests' helper programs into DIR "
                         "(test_klp-call_getpid)")
    hp.add_argument("dir")
    return ap


def cmd_mount(args: argparse.Namespace) -> int:
    if args.dir:
        target = Path(args.dir)
    else:
        target = mountpoints_dir() / "default"
        target.mkdir(exist_ok=True)
    scope = "all users" if os.geteuid() == 0 else "you only (a normal user mounts without allow_other)"
    if args.foreground:
        from .runtime.daemon import serve
        from .runtime.mounts import check_mountpoint
        check_mountpoint(target)
        print(f"livefs {__version__} serving {target.resolve()} for {scope}; stop it with Ctrl-C or: "
              f"livefs umount {target}", flush=True)
        return serve(str(target), KernelVersion.parse(args.kernel_version), args.scale, args.cpus,
                     ConsistencyModel(args.consistency_model), bool(args.fast_forward))
    pid = start_daemon(target, _model_args(args))
    print(f"livefs mounted at {target} for {scope} (daemon pid {pid}); stop it with: livefs umount {target}")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    stop_daemon(Path(args.dir))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from importlib import resources
    with resources.as_file(resources.files("livefs").joinpath("demo.sh")) as script:
        return subprocess.run(["bash", str(script)]).returncode


def cmd_tools(args: argparse.Namespace) -> int:
    from .tools import write_tools
    for path in write_tools(Path(args.dir)):
        print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime.reaper import become_subreaper, kill_descendants
    from .runtime.rootless import userns_problem
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        raise MountError("livefs run: no command given (livefs run -- CMD ...)")
    if shutil.which("unshare") is None:
        raise MountError("unshare (util-linux) is required for livefs run")
    inner = [sys.executable, "-m", "livefs.runtime.namespace", "--parent", str(os.getpid())]
    if args.mount_dir is not None:
        mnt = canonical(Path(args.mount_dir))
        check_alive(mnt)
        inner += ["--mount", str(mnt)]
    else:
        problem = fuse_device_problem()
        if problem:
            raise MountError(problem)
        for arg in _model_args(args):
            inner.append(f"--daemon-arg={arg}")
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        problem = userns_problem()
        if problem:
            raise MountError(f"run: {problem}")
        unshare[1:1] = ["--user", "--map-root-user"]
    sweep_stale_runs()
    scratch = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=mountpoints_dir()))
    # should the namespace's first process die, what it leaves becomes ours to end
    become_subreaper()
    try:
        env = dict(os.environ, LIVEFS_RUN_VERBOSE="1") if args.verbose else None
        proc = subprocess.Popen([*unshare, "--", *inner, str(scratch), "--", *cmd], env=env)

        def forward(signum: int, frame: object) -> None:
            proc.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            rc = proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            kill_descendants()
        return rc if rc >= 0 else 128 - rc
    finally:
        try:
            scratch.rmdir()
        except OSError:
            pass


def _status_file(mount_dir: str | None) -> Path:
    if mount_dir:
        candidates = [Path(mount_dir)]
    elif os.environ.get("LIVEFS_ROOT"):
        candidates = [Path(os.environ["LIVEFS_ROOT"])]
    else:
        candidates = [Path("/"), mountpoints_dir() / "default"]
    for root in candidates:
        if is_livefs_mount(root):
            check_alive(root)
        path = root / STATUS_FILE
        if path.exists():
            return path
    raise MountError(f"no livefs mount found at {', '.join(str(c) for c in candidates)}")


def cmd_status(args: argparse.Namespace) -> int:
    import time
    path = _status_file(args.mount_dir)
    if args.json:
        path = path.with_name("status.json")
    if not args.watch:
        sys.stdout.write(path.read_text())
        return 0
    try:
        while True:
            try:
                text = path.read_text()
            except OSError as exc:
                raise MountError(f"{path}: {exc.strerror}") from None
            sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + str(path.parent.parent.parent.parent)
                             + "\n\n" + text)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    import json
    from . import timeline
    path = _status_file(args.mount_dir).with_name("transitions.json")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise MountError(f"{path}: {exc.strerror}") from None
    records = data["records"]
    if not records:
        raise MountError("no transition has happened on this mount yet")
    if not 0 <= args.back < len(records):
        raise MountError(f"--back {args.back}: the mount keeps {len(records)} transition(s), 0 to {len(records) - 1}")
    if args.lanes < 2 or args.width < 20:
        raise MountError("--lanes must be at least 2 and --width at least 20")
    lay = timeline.layout(records[-1 - args.back], now_ns=data["now_ns"], max_lanes=args.lanes)
    if args.output is None:
        sys.stdout.write(timeline.render_text(lay, args.width))
    elif args.output.endswith(".svg"):
        Path(args.output).write_text(timeline.render_svg(lay))
    elif args.output.endswith(".png"):
        try:
            timeline.render_png(lay, args.output)
        except RuntimeError as exc:
            raise MountError(str(exc)) from None
    else:
        raise MountError(f"{args.output}: name a .svg or .png file")
    return 0


def _in_transition(root: Path) -> bool:
    for patch in (root / "sys/kernel/livepatch").iterdir():
        try:
            if (patch / "transition").read_text().strip() == "1":
                return True
        except FileNotFoundError:
            continue  # freed while we looked
    return False


def cmd_wait(args: argparse.Namespace) -> int:
    import time
    status = _status_file(args.mount_dir)
    root = status.parents[4]
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while _in_transition(root):
            if deadline is not None and time.monotonic() >= deadline:
                print(f"livefs wait: transition still in progress after {args.timeout:g} s", file=sys.stderr)
                sys.stderr.write(status.read_text())
                return 1
            time.sleep(0.05)
    except OSError as exc:
        raise MountError(f"{root}: {exc.strerror}") from None
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from livefs.catalog import image
    from livefs.selftest import SelftestError, run_selftests, select_scripts
    directory = Path(args.dir).resolve()
    if not directory.is_dir():
        raise MountError(f"{directory}: no such directory")
    try:
        select_scripts(directory, args.tests)  # refuse a bad -t before writing anything
    except SelftestError as exc:
        raise MountError(str(exc)) from None
    if not args.no_export:
        if not (directory / "test_modules").exists():
            image.export(directory / "test_modules", os.uname().release)
            print(f"livefs: wrote module stand-ins to {directory / 'test_modules'}", file=sys.stderr)
        if not (directory / "test_klp-call_getpid").exists():
            image.export_helpers(directory)
            print(f"livefs: wrote {directory / 'test_klp-call_getpid'}", file=sys.stderr)
    if args.fast_forward is None:
        args.fast_forward = True  # the scripts wait for transitions, not for time
    return run_selftests(directory, _model_args(args), args.timeout, only=args.tests)


def cmd_modules(args: argparse.Namespace) -> int:
    from livefs.catalog import catalog, image
    if args.modules_command == "build":
        try:
            defn, data = image.build_from_source(Path(args.file), os.uname().release, args.name)
        except image.BuildError as exc:
            raise MountError(str(exc)) from None
        out = Path(args.output) if args.output else Path(args.file).with_name(f"{defn.name}.ko")
        out.write_bytes(data)
        print(out)
        return 0
    if args.modules_command == "example":
        from importlib import resources
        Path(args.file).write_text(resources.files("livefs.examples").joinpath("greeting_fix.py").read_text())
        print(args.file)
        return 0
    if args.modules_command == "helpers":
        for path in image.export_helpers(Path(args.dir)):
            print(path)
        return 0
    if args.modules_command == "list":
        for name, defn in catalog().items():
            print(f"{name:<28} {'livepatch' if defn.livepatch else 'module':<9} {defn.description}")
        return 0
    unknown = [n for n in args.names if n not in catalog()]
    if unknown:
        raise MountError(f"not in the catalog: {', '.join(unknown)} (see livefs modules list)")
    release = os.uname().release
    for path in image.export(Path(args.dir), release, args.names or None):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handlers = {"mount": cmd_mount, "umount": cmd_umount, "run": cmd_run, "status": cmd_status,
                "wait": cmd_wait, "timeline": cmd_timeline, "tools": cmd_tools, "demo": cmd_demo, "selftest": cmd_selftest, "modules": cmd_modules}
    try:
        return handlers[args.command](args)
    except (MountError, PathError) as exc:
        print(f"livefs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
