#!/bin/bash
# Livepatch against the rest of ftrace: the sysctl, the function tracer, kprobes.
. "$(dirname "$0")/lib.sh"

LP=test_klp_livepatch
TR=/sys/kernel/tracing

begin "with ftrace_enabled off a livepatch cannot load"
sysctl -q kernel.ftrace_enabled=0 || fail "cannot turn ftrace off with no patch"
out=$(insmod "$MODDIR/$LP.ko" 2>&1) && fail "loaded with ftrace off"
expect_eq "$out" "insmod: ERROR: could not insert module $MODDIR/$LP.ko: Device or resource busy" "insmod"
sysctl -q kernel.ftrace_enabled=1
expect_log "$(printf '%s\n' "livepatch: enabling patch '$LP'" \
	"livepatch: failed to register ftrace handler for function 'cmdline_proc_show' (-16)" \
	"livepatch: failed to patch object 'vmlinux'" "livepatch: failed to enable patch '$LP'" \
	"livepatch: '$LP': unpatching complete")"
echo ok

begin "the function tracer sees the replacement while the patch stays in effect"
load $LP
echo 0 > $TR/tracing_on
echo livepatch_cmdline_proc_show > $TR/set_ftrace_filter || fail "filter"
echo function > $TR/current_tracer
echo 1 > $TR/tracing_on
expect_eq "$(cat /proc/cmdline)" "$LP: this has been live patched" "cmdline while traced"
grep -q "livepatch_cmdline_proc_show <-" $TR/trace || fail "no trace entry"
echo 0 > $TR/tracing_on
echo nop > $TR/current_tracer
echo > $TR/set_ftrace_filter
out=$( (echo no_such_function > $TR/set_ftrace_filter) 2>&1 ) && fail "unknown function accepted"
disable $LP
unload $LP
echo ok

begin "a kprobe with a post_handler keeps a livepatch off its function"
echo 1 > /sys/kernel/debug/kprobes/enabled
insmod "$MODDIR/test_klp_kprobe.ko" has_post_handler=true || fail "kprobe module"
out=$(insmod "$MODDIR/$LP.ko" 2>&1) && fail "livepatch loaded over an IPMODIFY kprobe"
[[ $out == *"Device or resource busy" ]] || fail "insmod said: $out"
rmmod test_klp_kprobe
insmod "$MODDIR/test_klp_kprobe.ko" has_post_handler=false || fail "kprobe module"
load $LP
rmmod test_klp_kprobe
disable $LP
unload $LP
echo ok
