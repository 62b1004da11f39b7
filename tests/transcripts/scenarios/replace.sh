#!/bin/bash
# replace: atomic replace (lp_replace, replace=1) over two stacked patches;
# the replaced patches leave sysfs but their modules stay loaded; re-enabling
# is impossible; the replacing patch itself disabled at the end.
. "${ORACLE:-/oracle}/lib.sh"
header replace

section "two stacked patches"
ins lp_cmdline
wait_transition_done lp_cmdline
ins lp_cmdline2
wait_transition_done lp_cmdline2
run "cat /proc/cmdline"
run "cat /sys/kernel/livepatch/lp_cmdline/replace /sys/kernel/livepatch/lp_cmdline2/replace"

section "atomic replace"
ins lp_replace
wait_transition_done lp_replace
wait_gone lp_cmdline
wait_gone lp_cmdline2
run "cat /proc/cmdline"
run "ls -la /sys/kernel/livepatch"
lpdump
run "lsmod | grep -E '^lp_' | awk '{print \$1, \$3, \$4}'"
run "cat /sys/module/lp_cmdline/refcnt /sys/module/lp_cmdline2/refcnt /sys/module/lp_replace/refcnt"
run "grep -E ' (cmdline_proc_show|oracle_cmdline_show)([[:space:]]|\$)' /proc/kallsyms | cut -d' ' -f2- | sort"

section "the replaced modules"
run "rmmod lp_cmdline"
ins lp_cmdline2
run "rmmod lp_cmdline2"
ins lp_cmdline2
wait_transition_done lp_cmdline2
run "cat /proc/cmdline"
lpdump

section "lp_replace under a newer patch"
run "rmmod lp_replace"
wn $LP/lp_replace/enabled 0
wait_gone lp_replace
run "cat /proc/cmdline"
wn $LP/lp_cmdline2/enabled 0
wait_gone lp_cmdline2
run "rmmod lp_replace lp_cmdline2"
run "cat /proc/cmdline"
footer
