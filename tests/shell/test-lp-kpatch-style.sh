#!/bin/bash
# What kpatch's management script reads and writes, done our own way: the module
# name from the ELF, insmod, a bounded wait on transition, stalled tasks from
# /proc/<pid>/task/<tid>/{patch_state,comm,stack}, the list states, unloading.
. "$(dirname "$0")/lib.sh"

EXAMPLE=$MODDIR/greeting_fix.py
livefs modules example "$EXAMPLE" >/dev/null || fail "livefs modules example"
TASKS=/sys/kernel/debug/livefs/tasks
command -v readelf >/dev/null || skip "readelf (binutils) is needed"
livefs modules build "$EXAMPLE" --name greeting -o "$MODDIR/greeting.ko" >/dev/null || fail "build greeting"
livefs modules build "$EXAMPLE" --name greeting_fix -o "$MODDIR/greeting_fix.ko" >/dev/null || fail "build fix"

elf_name() { readelf -p .gnu.linkonce.this_module "$1" | awk '/\[.*\]/ {print $3}'; }

# wait up to $2 seconds for the transition of $1 to finish
settled() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		[[ $(cat "$KLP/$1/transition") == 0 ]] && return 0
		sleep 0.1
	done
	return 1
}

stalled() {
	local want t
	want=$(cat "$KLP/$1/enabled")
	for t in /proc/[0-9]*/task/[0-9]*; do
		[[ -r $t/patch_state ]] || continue
		local s
		s=$(cat "$t/patch_state" 2>/dev/null) || continue
		[[ $s == -1 || $s == "$want" ]] && continue
		echo "${t##*/} $(cat "$t/comm")"
		cat "$t/stack"
	done
}

state_of() {
	local e t
	e=$(cat "$KLP/$1/enabled")
	t=$(cat "$KLP/$1/transition")
	case "$e$t" in 10) echo enabled;; 11) echo "enabling...";; 01) echo "disabling...";; *) echo disabled;; esac
}

begin "the patch module is named by its ELF .gnu.linkonce.this_module"
expect_eq "$(elf_name "$MODDIR/greeting_fix.ko")" "greeting_fix" "module name"
echo ok

begin "load, list, and the fix through /proc"
insmod "$MODDIR/greeting.ko" || fail "insmod target"
expect_eq "$(cat /proc/greeting)" "helo, world" "before"
insmod "$MODDIR/greeting_fix.ko" || fail "insmod fix"
settled greeting_fix 15 || fail "transition did not finish"
expect_eq "$(state_of greeting_fix)" "enabled" "list state"
expect_eq "$(cat /proc/greeting)" "hello, world." "after"
echo 0 > "$KLP/greeting_fix/enabled"
wait_for "[[ ! -e $KLP/greeting_fix ]]" || fail "did not unpatch"
unload greeting_fix
echo ok

begin "a stalled load shows the task that holds it, with its stack"
echo "spawn kthread greeter greeting_show" > $TASKS || fail "stage"
pid=$(awk '$2 == "greeter" {p = $1} END {print p}' $TASKS)
insmod "$MODDIR/greeting_fix.ko" || fail "insmod fix"
settled greeting_fix 2 && fail "the transition did not stall"
expect_eq "$(state_of greeting_fix)" "enabling..." "list state while stalled"
out=$(stalled greeting_fix)
[[ $out == "$pid greeter"* ]] || fail "stalled list: $out"
[[ $out == *"[<0>] greeting_show+0x0/0x40 [greeting]"* ]] || fail "stack: $out"
echo "wake $pid" > $TASKS
settled greeting_fix 5 || fail "still stalled after the wake-up"
echo "exit $pid" > $TASKS
echo 0 > "$KLP/greeting_fix/enabled"
wait_for "[[ ! -e $KLP/greeting_fix ]]" || fail "did not unpatch"
unload greeting_fix
unload greeting
echo ok
