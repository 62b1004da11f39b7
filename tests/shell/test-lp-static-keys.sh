#!/bin/bash
# The livepatch cond_resched static key over a transition, seen in the mock's
# debug view, and a CPU-bound kthread that switches through it (6.12: cond_resched()
# switches tasks in v6.4-v6.15 only).
# livefs run: --cpus 2 --kernel-version 6.12
. "$(dirname "$0")/lib.sh"

LP=test_klp_livepatch
TASKS=/sys/kernel/debug/livefs/tasks
KEYS=/sys/kernel/debug/livefs/static_keys
[[ -r $KEYS ]] || skip "no static key view (not a livefs mount)"

key_count() { awk '$1 == "klp_sched_try_switch_key" {print $4}' $KEYS; }
key_site() { awk '$1 == "klp_sched_try_switch_key" {print $5}' $KEYS; }

begin "cond_resched key: on for the transition, off after it; a spinning kthread switches itself"
expect_eq "$(key_count) $(key_site)" "0 cond_resched=nop" "key before"
echo "spawn kthread stuck cmdline_proc_show" > $TASKS
stuck=$(awk '$2 == "stuck" {p = $1} END {print p}' $TASKS)
echo "spawn kthread spinner" > $TASKS
spinner=$(awk '$2 == "spinner" {p = $1} END {print p}' $TASKS)
echo "spin $spinner process_one_work 1" > $TASKS ||
	fail "spin on CPU 1 refused: the model needs two CPUs (livefs run --cpus 2)"
insmod "$MODDIR/$LP.ko" || fail "insmod"
expect_eq "$(key_count) $(key_site)" "1 cond_resched=jmp" "key during the transition"
wait_for "[[ \$(cat /proc/$spinner/patch_state) == 1 ]]" || fail "the spinner did not switch itself"
expect_eq "$(cat /proc/$stuck/patch_state)" "0" "the sleeper"
echo "wake $stuck" > $TASKS
wait_for "[[ \$(cat $KLP/$LP/transition) == 0 ]]" || fail "transition did not complete"
expect_eq "$(key_count) $(key_site)" "0 cond_resched=nop" "key after"
grep -q "^cmdline_proc_show (1)   I     M 	tramp: " /sys/kernel/tracing/enabled_functions ||
	fail "enabled_functions: $(cat /sys/kernel/tracing/enabled_functions)"
echo "exit $stuck" > $TASKS
echo "exit $spinner" > $TASKS
disable $LP
unload $LP
[[ -z $(cat /sys/kernel/tracing/enabled_functions) ]] || fail "enabled_functions not empty after unload"
echo ok
