#!/bin/bash
# System states handed between cumulative patches, and shadow variables.
. "$(dirname "$0")/lib.sh"

S1=test_klp_state
S2=test_klp_state2

begin "a cumulative patch takes over the state and frees it on disable"
load $S1
load $S2
wait_for "[[ ! -e $KLP/$S1 ]]" || fail "replaced patch still present"
unload $S1
disable $S2
unload $S2
klog | grep -q "$S2: fix_console_loglevel: taking over the console_loglevel change" || fail "no takeover"
klog | grep -q "$S2: free_loglevel_state: freeing space for the stored console_loglevel" || fail "no free"
echo ok

begin "an older state version is refused"
load $S2
out=$(insmod "$MODDIR/$S1.ko" 2>&1) && fail "incompatible patch loaded"
expect_eq "$out" "insmod: ERROR: could not insert module $MODDIR/$S1.ko: Invalid parameters" "insmod"
klog | grep -qx "livepatch: Livepatch patch ($S1) is not compatible with the already installed livepatches." ||
	fail "no compatibility message"
disable $S2
unload $S2
echo ok

begin "shadow variables: every lookup finds what was attached"
insmod "$MODDIR/test_klp_shadow_vars.ko" || fail "insmod"
rmmod test_klp_shadow_vars || fail "rmmod"
expect_eq "$(klog | grep -c "got expected")" "19" "checks that passed"
klog | grep -q "Duplicate shadow variable" && fail "unexpected duplicate"
echo ok
