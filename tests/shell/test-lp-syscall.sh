#!/bin/bash
# Processes that never leave their syscall loop still switch at kernel exit.
. "$(dirname "$0")/lib.sh"

HELPER=./test_klp-call_getpid
[[ -x $HELPER ]] || skip "no $HELPER (livefs modules helpers .)"

begin "getpid hammering processes each reach the patched getpid"
pids=()
for _ in 1 2 3; do
	$HELPER &
	pids+=("$!")
done
load test_klp_syscall "klp_pids=$(IFS=,; echo "${pids[*]}")"
wait_for "[[ \$(cat /sys/kernel/test_klp_syscall/npids) == 0 ]]" || fail "not every helper was patched"
expect_eq "$(stat -c %A /sys/kernel/test_klp_syscall/npids)" "-r--r--r--" "npids mode"
kill "${pids[@]}"
wait 2>/dev/null
disable test_klp_syscall
unload test_klp_syscall
[[ ! -e /sys/kernel/test_klp_syscall ]] || fail "npids outlived its module"
echo ok
