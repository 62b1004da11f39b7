#!/bin/bash
# callbacks: lp_callbacks (pre/post patch/unpatch callbacks, patches
# version_proc_show): a failing pre_patch callback, a positive return, then a
# full enable/disable cycle with /proc/version.
. "${ORACLE:-/oracle}/lib.sh"
header callbacks

section "pre_patch_ret=-19 fails the load"
ins lp_callbacks pre_patch_ret=-19
run "ls -la /sys/kernel/livepatch"
run "ls -d /sys/module/lp_callbacks"
section "pre_patch_ret=-16"
ins lp_callbacks pre_patch_ret=-16
section "pre_patch_ret=1 (positive)"
ins lp_callbacks pre_patch_ret=1
run "ls /sys/kernel/livepatch"
run "cat /proc/sys/kernel/tainted"
run "cat /sys/module/lp_callbacks/initstate /sys/module/lp_callbacks/parameters/pre_patch_ret"
run "rmmod lp_callbacks"

section "enable"
run "head -c 14 /proc/version; echo"
ins lp_callbacks
wait_transition_done lp_callbacks
run "cat /proc/version"
lpdump
run "cat /sys/module/lp_callbacks/parameters/pre_patch_ret"
wn /sys/module/lp_callbacks/parameters/pre_patch_ret 5
run "cat /sys/module/lp_callbacks/parameters/pre_patch_ret"

section "disable"
wn $LP/lp_callbacks/enabled 0
wait_gone lp_callbacks
run "head -c 14 /proc/version; echo"
run "rmmod lp_callbacks"
footer
