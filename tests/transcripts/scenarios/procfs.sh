#!/bin/bash
# procfs: /dev/kmsg reads (sysio k), /proc/modules and kallsyms lines of
# loaded patches, /proc/PID/patch_state of tasks during and after a
# transition, dmesg of module loads.
. "${ORACLE:-/oracle}/lib.sh"
header procfs

section "/dev/kmsg"
"${ORACLE:-/oracle}/sysio" k ORACLE_KMSG_PROBE | sed 's/^/  /'
kmsg
r /dev/kmsg

section "patch_state with no patch"
run "cat /proc/self/patch_state /proc/1/patch_state"
pstate 1 $$

section "lp_cmdline + lp_cmdline2 loaded"
ins lp_cmdline
wait_transition_done lp_cmdline
ins lp_cmdline2
wait_transition_done lp_cmdline2
run "cat /proc/self/patch_state /proc/1/patch_state"
pstate 1 $$
run "grep '^lp_' /proc/modules | cut -d' ' -f1,3-5 | sort"
run "grep -E '\\[lp_cmdline2?\\]' /proc/kallsyms | cut -d' ' -f2- | sort"
run "grep -E ' (cmdline_proc_show|version_proc_show)\$' /proc/kallsyms | cut -d' ' -f2-"
run "cat /sys/module/lp_cmdline/taint /sys/module/lp_cmdline/initstate /sys/module/lp_cmdline/coresize >/dev/null; cat /sys/module/lp_cmdline/taint /sys/module/lp_cmdline/initstate"
run "ls /sys/module/lp_cmdline"
run "cat /proc/sys/kernel/tainted"

section "kmsg during a disable"
wn $LP/lp_cmdline2/enabled 0
"${ORACLE:-/oracle}/sysio" k AFTER_DISABLE | sed 's/^/  /'
wait_gone lp_cmdline2
kmsg
wn $LP/lp_cmdline/enabled 0
wait_gone lp_cmdline
run "rmmod lp_cmdline2 lp_cmdline"
run "grep -c '^lp_' /proc/modules"
footer
