#!/bin/bash
# Helpers for livefs's own kselftest-style scripts (run them under `livefs run`).
# Conventions as in the kernel's selftests: "TEST: name ... ok", exit 4 to skip.
# Under CI=true a skip is a failure: none of our skips is a platform limit
# (they mean a wrong setup: not under livefs run, no stand-ins, no binutils),
# and CI must not go green on scripts that did not run.  What a script needs
# of the model it asks for in a "# livefs run: OPTIONS" line (read by our
# runners), so that is never a reason to skip.

export LC_ALL=C
MODDIR=${MODDIR:-test_modules}
KLP=/sys/kernel/livepatch
MARK=0

skip() {
	if [[ ${CI:-} == true ]]; then
		echo "FAIL: would skip under CI=true: $*" >&2
		exit 1
	fi
	echo "SKIP: $*"
	exit 4
}
fail() { echo "not ok"; echo "FAIL: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || skip "must run as root"
[[ -d $KLP ]] || skip "no $KLP (run me under livefs run)"
[[ -d $MODDIR ]] || skip "no module stand-ins in $MODDIR (livefs modules export $MODDIR)"

# poll a shell condition for up to ~15 s
wait_for() {
	local i
	for ((i = 0; i < 300; i++)); do
		eval "$1" && return 0
		sleep 0.05
	done
	return 1
}

begin() {
	printf 'TEST: %s ... ' "$1"
	echo "livefs selftest: $1" > /dev/kmsg
	MARK=$(dmesg | wc -l)
}

# kernel log lines since begin(), filtered like the upstream check_result
klog() {
	dmesg --notime | tail -n +"$((MARK + 1))" | grep -e 'livepatch:' -e 'test_klp' | grep -v 'taint'
}

expect_log() {
	diff -u --label expected --label actual <(printf '%s\n' "$1") <(klog) >&2 || fail "kernel log differs"
}

expect_eq() {
	[[ "$1" == "$2" ]] || fail "$3: expected '$2', got '$1'"
}

load() {
	local out
	out=$(insmod "$MODDIR/$1.ko" "${@:2}" 2>&1) || fail "insmod $1: $out"
	wait_for "[[ -e $KLP/$1 ]] && [[ \$(cat $KLP/$1/transition) == 0 ]]" || fail "$1 did not finish its transition"
}

unload() {
	wait_for "[[ \$(cat /sys/module/$1/refcnt) == 0 ]]" || fail "$1 still referenced"
	rmmod "$1" || fail "rmmod $1"
}

disable() {
	echo 0 > "$KLP/$1/enabled" || fail "disable $1"
	wait_for "[[ ! -e $KLP/$1 ]]" || fail "$KLP/$1 did not go away"
}

loaded_block() {
	printf '%s\n' "livepatch: enabling patch '$1'" "livepatch: '$1': starting patching transition" \
		"livepatch: '$1': patching complete"
}

disabled_block() {
	printf '%s\n' "livepatch: '$1': starting unpatching transition" "livepatch: '$1': unpatching complete"
}
