#!/bin/bash
# busy: a kthread (lp_busy_worker of lp_busy_target) sleeps inside
# lp_busy_target_wait(), so lp_busy's transition stays pending; it is
# reversed, patched again and released; then the unpatch is held by the worker
# sleeping in the NEW function (lp_busy hold=1), reversed, held again and
# forced. patch_state of the tasks, /proc/lp_busy_target, rmmod of a forced
# patch and of a target whose worker sleeps in a replacement function.
. "${ORACLE:-/oracle}/lib.sh"
header busy
T=/sys/module/lp_busy_target/parameters
B=/sys/module/lp_busy/parameters

section "target, worker held in lp_busy_target_wait"
ins lp_busy_target hold_max_ms=60000
sleep 0.5
WPID=$(pgrep -x lp_busy_worker)
note "worker pid found: $([ -n "$WPID" ] && echo yes || echo no)"
run "cat /proc/lp_busy_target"
run "grep -E ' (lp_busy_target_wait|lp_busy_target_msg|new_wait|new_msg)([[:space:]]|\$)' /proc/kallsyms | cut -d' ' -f2- | sort"

section "patch: transition held"
ins lp_busy
sleep 2
run "cat /sys/kernel/livepatch/lp_busy/transition /sys/kernel/livepatch/lp_busy/enabled"
pstate $WPID
run "cat /proc/lp_busy_target"
wn $LP/lp_busy/force 0
wn $LP/lp_busy/enabled 1
run "rmmod lp_busy"

section "reverse the held transition"
wn $LP/lp_busy/enabled 0
wait_gone lp_busy
pstate $WPID
run "cat /proc/lp_busy_target"
run "rmmod lp_busy"

section "patch again, release the worker"
ins lp_busy
sleep 2
run "cat /sys/kernel/livepatch/lp_busy/transition"
wn $T/hold 0
wait_transition_done lp_busy
pstate $WPID
run "cat /proc/lp_busy_target"

section "unpatch held by the new function"
wn $B/hold 1
wn $T/hold 1
sleep 1
wn $LP/lp_busy/enabled 0
sleep 2
run "cat /sys/kernel/livepatch/lp_busy/transition /sys/kernel/livepatch/lp_busy/enabled"
pstate $WPID
note "reverse the unpatch"
wn $LP/lp_busy/enabled 1
wait_transition_done lp_busy
run "cat /sys/kernel/livepatch/lp_busy/transition /sys/kernel/livepatch/lp_busy/enabled"
wn $LP/lp_busy/enabled 0
sleep 2
run "cat /sys/kernel/livepatch/lp_busy/transition /sys/kernel/livepatch/lp_busy/enabled"

section "force"
wn $LP/lp_busy/force 1
wait_gone lp_busy
pstate $WPID
run "cat /proc/lp_busy_target"
run "cat /sys/module/lp_busy/refcnt"
run "rmmod lp_busy"
run "cat /proc/sys/kernel/tainted"

section "rmmod the target while its worker sleeps in the forced patch's function"
run "rmmod lp_busy_target"
run "pgrep -c -x lp_busy_worker"
wn $B/hold 0
run "rmmod lp_busy"
footer
