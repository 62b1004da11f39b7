#!/bin/bash
# Reversing a stalled transition by writing the opposite value to enabled.
. "$(dirname "$0")/lib.sh"

LP=test_klp_livepatch
TASKS=/sys/kernel/debug/livefs/tasks
[[ -w $TASKS ]] || skip "no task staging controls (not a livefs mount)"

begin "a stalled patching transition reverses to unpatched"
echo "spawn kthread stuck-old cmdline_proc_show" > $TASKS || fail "stage"
pid=$(awk '$2 == "stuck-old" {p = $1} END {print p}' $TASKS)
insmod "$MODDIR/$LP.ko" || fail "insmod"
out=$( (echo 1 > "$KLP/$LP/enabled") 2>&1 ) && fail "re-enable during patching succeeded"
echo 0 > "$KLP/$LP/enabled" || fail "reverse"
expect_eq "$(cat $KLP/$LP/enabled) $(cat $KLP/$LP/transition)" "0 1" "right after the reversal"
expect_eq "$(cat /proc/self/patch_state)" "0" "this shell after the reversal"
[[ "$(cat /proc/cmdline)" != *"live patched"* ]] || fail "still patched after the reversal"
wait_for "[[ ! -e $KLP/$LP ]]" || fail "reversed transition did not complete"
unload $LP
echo "exit $pid" > $TASKS
expect_log "$(printf '%s\n' "livepatch: enabling patch '$LP'" "livepatch: '$LP': starting patching transition" \
	"livepatch: '$LP': starting unpatching transition" "livepatch: '$LP': unpatching complete")"
echo ok

begin "a stalled unpatching transition reverses to patched"
load $LP
echo "spawn kthread stuck-new livepatch_cmdline_proc_show" > $TASKS || fail "stage"
pid=$(awk '$2 == "stuck-new" {p = $1} END {print p}' $TASKS)
echo 0 > "$KLP/$LP/enabled"
echo 1 > "$KLP/$LP/enabled" || fail "reverse"
wait_for "[[ \$(cat $KLP/$LP/transition) == 0 ]]" || fail "did not complete"
expect_eq "$(cat $KLP/$LP/enabled)" "1" "enabled after reversal"
expect_eq "$(cat /proc/cmdline)" "$LP: this has been live patched" "patched again"
echo "wake $pid" > $TASKS
echo "exit $pid" > $TASKS
disable $LP
unload $LP
expect_log "$(loaded_block $LP; printf '%s\n' "livepatch: '$LP': starting unpatching transition" \
	"livepatch: '$LP': starting patching transition" "livepatch: '$LP': patching complete"
	disabled_block $LP)"
echo ok
