#!/bin/bash
# params: insmod and sysfs writes with bad parameter values (lp_callbacks'
# int pre_patch_ret, lp_busy_target's bool hold and uint hold_max_ms):
# errno texts and kernel messages; modinfo of the modules.
. "${ORACLE:-/oracle}/lib.sh"
header params

section "insmod with bad parameters"
ins lp_callbacks pre_patch_ret=abc
ins lp_callbacks pre_patch_ret=
ins lp_callbacks pre_patch_ret=99999999999
ins lp_callbacks pre_patch_ret=2147483648
ins lp_callbacks pre_patch_ret=-2147483649
ins lp_callbacks pre_patch_ret
ins lp_callbacks pre_patch_ret=0x10 no_such_param=1
run "cat /sys/module/lp_callbacks/parameters/pre_patch_ret"
run "rmmod lp_callbacks"
ins lp_busy_target hold=maybe
ins lp_busy_target hold_max_ms=-1
ins lp_busy_target hold_max_ms=4294967296
run "ls /sys/kernel/livepatch"
run "lsmod | grep -E '^lp_' | awk '{print \$1, \$3, \$4}'"

section "parameter files"
ins lp_busy_target hold=0 hold_max_ms=300
run "ls -la /sys/module/lp_busy_target/parameters"
run "cat /sys/module/lp_busy_target/parameters/hold /sys/module/lp_busy_target/parameters/hold_max_ms"
for v in maybe 2 -1 '' yes n Y 1; do wn /sys/module/lp_busy_target/parameters/hold "$v"; done
for v in -1 4294967296 abc 12x 0x20 ''; do wn /sys/module/lp_busy_target/parameters/hold_max_ms "$v"; done
run "cat /sys/module/lp_busy_target/parameters/hold /sys/module/lp_busy_target/parameters/hold_max_ms"
wn /sys/module/lp_busy_target/parameters/hold 0
run "rmmod lp_busy_target"

section "modinfo"
run "modinfo -F parm $MODDIR/lp_callbacks.ko"
run "modinfo -F parm $MODDIR/lp_busy_target.ko"
run "modinfo -F livepatch $MODDIR/lp_cmdline.ko; modinfo -F license $MODDIR/lp_cmdline.ko; modinfo -F description $MODDIR/lp_cmdline.ko"
footer
