#!/bin/bash
# signals: a transition stalled by a kthread in lp_busy_target_wait for about
# 18 s: the kernel's messages after its 15th retry ("signaling remaining
# tasks"), the kthread's patch_state, then release.
. "${ORACLE:-/oracle}/lib.sh"
header signals
T=/sys/module/lp_busy_target/parameters

ins lp_busy_target hold_max_ms=60000
sleep 0.5
WPID=$(pgrep -x lp_busy_worker)
ins lp_busy
for i in 1 2 3 4 5 6; do
    sleep 3
    note "after ~$((i * 3)) s: transition=$(cat $LP/lp_busy/transition)"
    kmsg
done
pstate $WPID $$
wn $T/hold 0
wait_transition_done lp_busy
run "cat /proc/lp_busy_target"
wn $LP/lp_busy/enabled 0
wait_gone lp_busy
run "rmmod lp_busy lp_busy_target"
footer
