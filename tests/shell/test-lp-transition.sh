#!/bin/bash
# Transitions that do not finish at once: stalled, woken, forced, reversed.
. "$(dirname "$0")/lib.sh"

LP=test_klp_livepatch
TASKS=/sys/kernel/debug/livefs/tasks
[[ -w $TASKS ]] || skip "no task staging controls (not a livefs mount)"

# stage a kthread sleeping in FUNC; prints its pid
stage() {
	echo "spawn kthread $1 $2" > $TASKS || fail "cannot stage $1"
	awk -v c="$1" '$2 == c {p = $1} END {print p}' $TASKS
}

transition_is() { [[ $(cat "$KLP/$LP/transition") == "$1" ]]; }

begin "a task sleeping in the old function stalls the patching transition until woken"
pid=$(stage stuck-old cmdline_proc_show)
insmod "$MODDIR/$LP.ko" || fail "insmod"
transition_is 1 || fail "transition did not stall"
expect_eq "$(cat /proc/$pid/patch_state)" "0" "blocked task"
expect_eq "$(cat /proc/self/patch_state)" "1" "this shell"
expect_eq "$(cat /proc/cmdline)" "$LP: this has been live patched" "switched reader"
sleep 1.5
transition_is 1 || fail "completed while the task still sleeps in the old function"
echo "wake $pid" > $TASKS
wait_for "transition_is 0" || fail "transition did not complete after the wake-up"
expect_eq "$(cat /proc/$pid/patch_state)" "-1" "after completion"
echo "exit $pid" > $TASKS
disable $LP
unload $LP
expect_log "$(loaded_block $LP; disabled_block $LP)"
echo ok

begin "force completes a stalled unpatching transition and pins the module"
load $LP
pid=$(stage stuck-new livepatch_cmdline_proc_show)
echo 0 > "$KLP/$LP/enabled"
transition_is 1 || fail "unpatching did not stall"
expect_eq "$(cat /proc/$pid/patch_state)" "1" "blocked task"
echo 1 > "$KLP/$LP/force" || fail "force"
wait_for "[[ ! -e $KLP/$LP ]]" || fail "forced transition did not complete"
expect_eq "$(cat /sys/module/$LP/refcnt)" "1" "refcnt after a forced unpatch"
out=$(rmmod $LP 2>&1) && fail "a forced module could be removed"
expect_eq "$out" "rmmod: ERROR: Module $LP is in use" "rmmod"
echo "exit $pid" > $TASKS
expect_log "$(loaded_block $LP; echo "livepatch: '$LP': starting unpatching transition"
	echo "livepatch: forcing remaining tasks to the patched state"
	echo "livepatch: '$LP': unpatching complete")"
echo ok
