#!/bin/bash
# stack: two patches (lp_cmdline, lp_cmdline2) on one function; the newest
# wins; disabling the lower one first, then the upper; kallsyms of both
# replacements; the same patch module loaded twice.
. "${ORACLE:-/oracle}/lib.sh"
header stack

section "two patches on cmdline_proc_show"
ins lp_cmdline
wait_transition_done lp_cmdline
run "cat /proc/cmdline"
ins lp_cmdline2
wait_transition_done lp_cmdline2
run "cat /proc/cmdline"
run "ls -la /sys/kernel/livepatch"
lpdump
run "grep -E ' (cmdline_proc_show|oracle_cmdline_show)([[:space:]]|\$)' /proc/kallsyms | cut -d' ' -f2- | sort"
run "lsmod | grep -E '^lp_' | awk '{print \$1, \$3, \$4}'"

section "disable the lower patch first"
wn $LP/lp_cmdline/enabled 0
wait_gone lp_cmdline
run "cat /proc/cmdline"
lpdump

section "then the upper"
wn $LP/lp_cmdline2/enabled 0
wait_gone lp_cmdline2
run "cat /proc/cmdline"
run "rmmod lp_cmdline2 lp_cmdline"
run "lsmod | grep -E '^lp_' | awk '{print \$1, \$3, \$4}'"
run "ls -la /sys/kernel/livepatch"

section "insmod the same patch twice"
ins lp_cmdline
ins lp_cmdline
wait_transition_done lp_cmdline
wn $LP/lp_cmdline/enabled 0
wait_gone lp_cmdline
run "rmmod lp_cmdline"
footer
