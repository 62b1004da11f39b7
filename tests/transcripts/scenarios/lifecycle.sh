#!/bin/bash
# lifecycle: one patch (lp_cmdline) from insmod to rmmod; ls -la of the tree
# (modes, link counts); a bad write to every livepatch attribute (errno texts);
# rmmod of a live livepatch module; /proc/modules, lsmod and kallsyms lines.
. "${ORACLE:-/oracle}/lib.sh"
header lifecycle

section "before"
run "ls -la /sys/kernel/livepatch"
run "grep -c . /proc/modules"
run "grep -E ' (cmdline_proc_show|oracle_cmdline_show)([[:space:]]|\$)' /proc/kallsyms | cut -d' ' -f2-"

section "insmod lp_cmdline"
ins lp_cmdline
wait_transition_done lp_cmdline
run "ls -la /sys/kernel/livepatch"
run "ls -la /sys/kernel/livepatch/lp_cmdline"
run "ls -la /sys/kernel/livepatch/lp_cmdline/vmlinux"
run "ls -la /sys/kernel/livepatch/lp_cmdline/vmlinux/cmdline_proc_show,1"
lpdump
run "cat /proc/cmdline"
run "grep '^lp_cmdline ' /proc/modules | cut -d' ' -f1,3-5"
run "lsmod | grep -E '^(Module|lp_cmdline)' | awk '{print \$1, \$3, \$4}'"
run "grep -E ' (cmdline_proc_show|oracle_cmdline_show)([[:space:]]|\$)' /proc/kallsyms | cut -d' ' -f2-"
run "cat /sys/module/lp_cmdline/refcnt /sys/module/lp_cmdline/initstate"
run "cat /proc/self/patch_state"

section "bad writes to every attribute"
for f in enabled transition force replace; do
    [ -e $LP/lp_cmdline/$f ] || { note "no $f"; continue; }
    for v in 2 -1 abc ''; do wn $LP/lp_cmdline/$f "$v"; done
    w $LP/lp_cmdline/$f ""
done
wn $LP/lp_cmdline/enabled 1
wn $LP/lp_cmdline/enabled " 1"
wn $LP/lp_cmdline/enabled "1 "
wn $LP/lp_cmdline/enabled "yes"
wn $LP/lp_cmdline/enabled "on"
wn $LP/lp_cmdline/enabled "Y"
wn $LP/lp_cmdline/force 1
for f in $(cd $LP/lp_cmdline && find . -type f | sort | grep -v -e '^./enabled$' -e '^./transition$' -e '^./force$' -e '^./replace$'); do
    wn "$LP/lp_cmdline/${f#./}" 1
done
wn $LP/lp_cmdline/vmlinux 1
run "echo 1 > /sys/kernel/livepatch/lp_cmdline/transition"
run "echo 1 > /sys/kernel/livepatch/lp_cmdline/replace"
run "echo 1 > /sys/kernel/livepatch/lp_cmdline/vmlinux/patched"
run "touch /sys/kernel/livepatch/newfile"
run "mkdir /sys/kernel/livepatch/lp_cmdline/x"
run "rm -f /sys/kernel/livepatch/lp_cmdline/enabled"

section "rmmod while enabled"
run "rmmod lp_cmdline"
run "rmmod no_such_module"

section "disable (with 0x1: kstrtobool reads the first character), rmmod"
wn $LP/lp_cmdline/enabled 0x1
wait_gone lp_cmdline
run "cat /proc/cmdline"
run "ls -la /sys/kernel/livepatch"
run "cat /sys/module/lp_cmdline/refcnt"
run "rmmod lp_cmdline"
run "rmmod lp_cmdline"
run "ls -d /sys/module/lp_cmdline"
footer
