#!/bin/bash
# internals: a module's kthread and the module itself as /proc and
# /sys/module show them: pids below pid_max; /proc/PID/stack of a module's
# worker asleep in its function and in a livepatch's replacement of it;
# /sys/module/M of a module and of a livepatch (coresize, initsize,
# initstate, refcnt, taint, uevent, holders/, notes/, sections/); kallsyms
# of both modules.
. "${ORACLE:-/oracle}/lib.sh"
header internals
M=/sys/module/lp_busy_target

section "a module's kthread"
ins lp_busy_target hold_max_ms=60000
sleep 0.5
run "M=\$(cat /proc/sys/kernel/pid_max); for c in lp_busy_worker kthreadd ksoftirqd/0; do p=\$(pgrep -x \$c); [ \"\$p\" -gt 0 ] && [ \"\$p\" -lt \"\$M\" ] && echo \"\$c: below pid_max\"; done"
run "cat /proc/\$(pgrep -x lp_busy_worker)/stack"

section "/sys/module of a module"
run "ls -la $M | grep -v ' \\.\\.\$' | tr -s ' '"
run "cd $M && grep -H . coresize initsize initstate refcnt taint"
run "cat $M/uevent"
run "ls -la $M/holders $M/notes"
run "ls -la $M/sections"
run "sed -E 's/^0x[0-9a-f]{16}\$/0x<address>/' $M/sections/.text $M/sections/.gnu.linkonce.this_module"
run "grep '^lp_busy_target ' /proc/modules | cut -d' ' -f1-5"
run "grep -E '\\[lp_busy_target\\]' /proc/kallsyms | cut -d' ' -f2- | sort"

section "and of its livepatch"
SETTLE=0.5 wn $M/parameters/hold 0
ins lp_busy
wait_transition_done lp_busy
run "ls -la /sys/module/lp_busy | grep -v ' \\.\\.\$' | tr -s ' '"
run "cd /sys/module/lp_busy && grep -H . coresize initsize initstate refcnt taint"
run "ls -a $M/holders /sys/module/lp_busy/holders; cat $M/refcnt"
run "ls -a /sys/module/lp_busy/sections"
run "grep '^lp_busy' /proc/modules | cut -d' ' -f1-5 | sort"
run "grep -E '\\[lp_busy\\]' /proc/kallsyms | cut -d' ' -f2- | sort"
wn /sys/module/lp_busy/parameters/hold 1
wn $M/parameters/hold 1
sleep 0.5
run "cat /proc/\$(pgrep -x lp_busy_worker)/stack"
SETTLE=0.5 wn /sys/module/lp_busy/parameters/hold 0
SETTLE=0.5 wn $M/parameters/hold 0
wn /sys/module/lp_busy/uevent add
wn /sys/module/lp_busy/uevent bogus
w /sys/module/lp_busy/uevent ''

section "cleanup"
wn $LP/lp_busy/enabled 0
wait_gone lp_busy
run "rmmod lp_busy lp_busy_target"
run "ls /sys/module/lp_busy_target"
footer
