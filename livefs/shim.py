"""Stand-ins for kmod and util-linux tools inside ``livefs run``.

livefs.tools writes one small launcher per tool (insmod, rmmod, modprobe,
modinfo, lsmod, dmesg) that calls :func:`main` with its name.  It talks to the mock through files
only: /sys/module, /proc/modules, /dev/kmsg and the mock's control files under
/sys/kernel/debug/livefs (below $LIVEFS_ROOT, "/" inside livefs run).  Output
texts and exit codes are those of kmod 30 and util-linux.  Standard library
only, so a launcher starts quickly.
"""

import errno
import os
import sys

from livefs import modimage

ROOT = os.environ.get("LIVEFS_ROOT", "/")
CTL = os.path.join(ROOT, "sys/kernel/debug/livefs")


def p(*parts):
    return os.path.join(ROOT, *parts)


def err(msg):
    print(msg, file=sys.stderr)


def read(path):
    with open(path) as f:
        return f.read()


def mod_strerror(code):
    """kmod's mod_strerror(): module-specific wording for a few errnos."""
    return {
        errno.ENOEXEC: "Invalid module format",
        errno.ENOENT: "Unknown symbol in module",
        errno.ESRCH: "Unknown symbol in module",
        errno.EINVAL: "Invalid parameters",
    }.get(code, os.strerror(code))


def modname(arg):
    base = os.path.basename(arg)
    if base.endswith(".ko"):
        base = base[:-3]
    return base.replace("-", "_")


def open_syscall(name):
    """The mock's control file for a module syscall.  The mock's debugfs is
    root's, as the kernel's is: a caller who cannot reach it lacks
    CAP_SYS_MODULE, and the syscall itself would say EPERM."""
    try:
        return os.open(os.path.join(CTL, name), os.O_WRONLY)
    except PermissionError:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM)) from None


def init_module(image, args):
    record = args.encode() + b"\0" + image
    data = memoryview(f"{len(record)}\n".encode() + record)
    fd = open_syscall("init_module")
    try:
        while data:  # the mock gathers the pieces; the last write carries the result
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def insmod(argv):
    args = [a for a in argv if a not in ("-f", "--force", "-s", "--syslog", "-v", "--verbose")]
    if not args:
        err("insmod: ERROR: missing filename.")
        return 1
    path, params = args[0], " ".join(args[1:])
    try:
        with open(path, "rb") as f:
            image = f.read()
    except OSError as e:
        err(f"insmod: ERROR: could not load module {path}: {e.strerror}")
        return 1
    try:
        init_module(image, params)
    except OSError as e:
        err(f"insmod: ERROR: could not insert module {path}: {mod_strerror(e.errno)}")
        return 1
    return 0


def loaded(name):
    return os.path.isdir(p("sys/module", name))


def refcnt(name):
    try:
        return int(read(p("sys/module", name, "refcnt")))
    except (OSError, ValueError):
        return 0


def delete_module(name):
    fd = open_syscall("delete_module")
    try:
        os.write(fd, name.encode())
    finally:
        os.close(fd)


def rmmod(argv):
    names = [a for a in argv if not a.startswith("-")]
    if not names:
        err("rmmod: ERROR: missing module name.")
        return 1
    rc = 0
    for arg in names:
        name = modname(arg)
        if not loaded(name):
            err(f"rmmod: ERROR: Module {name} is not currently loaded")
            rc = 1
            continue
        if refcnt(name) > 0:
            err(f"rmmod: ERROR: Module {name} is in use")
            rc = 1
            continue
        try:
            delete_module(name)
        except OSError as e:
            err(f"rmmod: ERROR: could not remove module {name}: {os.strerror(e.errno)}")
            rc = 1
    return rc


def modprobe(argv):
    remove = dry = quiet = False
    rest = []
    for a in argv:
        if a in ("-r", "--remove"):
            remove = True
        elif a in ("-n", "--dry-run", "--show"):
            dry = True
        elif a in ("-q", "--quiet"):
            quiet = True
        elif a.startswith("-"):
            continue
        else:
            rest.append(a)
    if not rest:
        err("modprobe: ERROR: missing parameters. See -h.")
        return 1
    name, params = modname(rest[0]), " ".join(rest[1:])
    if remove:
        if not loaded(name):
            return 0
        if refcnt(name) > 0:
            err(f"modprobe: FATAL: Module {name} is in use.")
            return 1
        if not dry:
            delete_module(name)
        return 0
    if name not in read(os.path.join(CTL, "catalog")).split():
        if not quiet:
            err(f"modprobe: FATAL: Module {name} not found in directory /lib/modules/{os.uname().release}")
        return 1
    if dry or loaded(name):
        return 0
    image = modimage.build(name, [("name", name)], modimage.make_payload({"catalog": name}))
    try:
        init_module(image, params)
    except OSError as e:
        reason = ("Unknown symbol in module, or unknown parameter (see dmesg)"
                  if e.errno == errno.ENOENT else os.strerror(e.errno))
        err(f"modprobe: ERROR: could not insert '{name}': {reason}")
        return 1
    return 0


MODINFO_FLAGS = {"-a": "author", "--author": "author", "-d": "description", "--description": "description",
                 "-l": "license", "--license": "license", "-p": "parm", "--parameters": "parm",
                 "-n": "filename", "--filename": "filename"}


def modinfo(argv):
    field, files, args = None, [], iter(argv)
    for a in args:
        if a in ("-F", "--field"):
            field = next(args, None)
        elif a.startswith("--field="):
            field = a.partition("=")[2]
        elif a in MODINFO_FLAGS:
            field = MODINFO_FLAGS[a]
        elif not a.startswith("-"):
            files.append(a)
    if not files:
        err("modinfo: ERROR: missing module or filename.")
        return 1
    rc = 0
    for arg in files:
        try:
            with open(arg, "rb") as f:
                info = modimage.modinfo(f.read())
        except OSError:
            err(f"modinfo: ERROR: Module {arg} not found.")
            rc = 1
            continue
        except modimage.ImageError:
            err(f"modinfo: ERROR: could not get modinfo from '{modname(arg)}': Invalid argument")
            rc = 1
            continue
        filename = os.path.abspath(arg)
        if field == "filename":
            print(filename)
        elif field == "parm":  # modinfo_params_do()
            for pname, desc, ptype in kmod_params(info):
                print(f"{pname}: ({ptype})" if desc is None else
                      f"{pname}:{desc} ({ptype})" if ptype is not None else f"{pname}:{desc}")
        elif field is not None:
            for key, value in info:
                if key == field:
                    print(value)
        else:
            for key, value in [("filename", filename)] + kmod_fields(info):
                print(f"{key + ':':<16}{value}")
    return rc


def kmod_params(info):
    """kmod's process_parm(): one entry per parameter name, its description
    (parm=) and type (parmtype=), each new name put at the front of the
    list, so they come out in reverse order of first appearance."""
    params = []
    for key, value in info:
        if key not in ("parm", "parmtype"):
            continue
        pname, colon, rest = value.partition(":")
        if not colon:
            err(f'modinfo: ERROR: Found invalid "{key}={value}": missing \':\'')
            continue
        entry = next((e for e in params if e[0] == pname), None)
        if entry is None:
            entry = [pname, None, None]
            params.insert(0, entry)
        entry[1 if key == "parm" else 2] = rest
    return [tuple(e) for e in params]


def kmod_fields(info):
    """modinfo_do(): the fields in section order, then one parm: line per
    parameter: ``name:desc (type)``, ``name:type`` without a description."""
    out = [(k, v) for k, v in info if k not in ("parm", "parmtype")]
    for pname, desc, ptype in kmod_params(info):
        out.append(("parm", f"{pname}:{ptype}" if desc is None else
                    f"{pname}:{desc} ({ptype})" if ptype is not None else f"{pname}:{desc}"))
    return out


def lsmod(argv):
    """kmod's lsmod: /proc/modules (which any user may read), holders
    from /sys/module/<name>/holders."""
    try:
        text = read(p("proc/modules"))
    except OSError as e:
        err(f"lsmod: ERROR: could not open '/proc/modules': {e.strerror}")
        return 1
    print("Module                  Size  Used by")
    for line in text.splitlines():
        name, size, refs = line.split()[:3]
        try:
            holders = sorted(os.listdir(p("sys/module", name, "holders")))
        except OSError:
            holders = []
        tail = " " + ",".join(holders) if holders else ""
        print(f"{name:<19} {int(size):>8}  {refs}{tail}")
    return 0


def unescape(text):
    out, i = bytearray(), 0
    raw = text.encode()
    while i < len(raw):
        if raw[i:i + 2] == b"\\x" and i + 4 <= len(raw):
            try:
                out.append(int(raw[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return out.decode("utf-8", "replace")


def dmesg_record(text, usec, notime=False):
    """How util-linux dmesg prints a /dev/kmsg record's text: the text only
    (not the dictionary lines after it), unescaped (a \\x0a is the record's
    own newline), continuation lines indented to the timestamp's width (its
    safe_fwrite() with ctl->indent; none with --notime)."""
    prefix = "" if notime else f"[{usec // 1000000:5d}.{usec % 1000000:06d}] "
    return prefix + unescape(text.split("\n")[0]).replace("\n", "\n" + " " * len(prefix))


def dmesg(argv):
    clear_after = "-c" in argv or "--read-clear" in argv
    clear_only = "-C" in argv or "--clear" in argv
    notime = "-t" in argv or "--notime" in argv
    ctl_clear = os.path.join(CTL, "kmsg_clear_seq")

    def clear():
        try:
            with open(ctl_clear, "w") as f:
                f.write("1")
            return 0
        except OSError:  # syslog(SYSLOG_ACTION_CLEAR) wants CAP_SYSLOG
            err(f"dmesg: klogctl failed: {os.strerror(errno.EPERM)}")
            return 1

    if clear_only:
        return clear()
    try:
        fd = os.open(p("dev/kmsg"), os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:  # dmesg_restrict: util-linux falls back to syslog(2), refused too
        err(f"dmesg: read kernel buffer failed: {e.strerror}")
        return 1
    try:
        start = int(read(ctl_clear))
    except OSError:
        start = 0  # the clear mark is root's to see: an unprivileged reader gets the whole buffer
    out = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:
                    continue
                raise
            if not rec:
                break
            header, _, text = rec.decode("utf-8", "replace").rstrip("\n").partition(";")
            fields = header.split(",")
            seq, usec = int(fields[1]), int(fields[2])
            if seq < start:
                continue
            out.append(dmesg_record(text, usec, notime))
    finally:
        os.close(fd)
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    return clear() if clear_after else 0


TOOLS = {"insmod": insmod, "rmmod": rmmod, "modprobe": modprobe, "modinfo": modinfo,
         "lsmod": lsmod, "dmesg": dmesg}


def main(tool=None, argv=None):
    tool = tool or os.path.basename(sys.argv[0])
    argv = sys.argv[1:] if argv is None else argv
    if tool not in TOOLS:
        err(f"livefs.shim: unknown tool {tool!r}; call me as one of {', '.join(sorted(TOOLS))}")
        return 2
    try:
        return TOOLS[tool](argv)
    except BrokenPipeError:
        return 141
    except OSError as e:
        err(f"{tool}: ERROR: {e.strerror or e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
