#!/bin/bash
# Patch, observe, unpatch: the basic life of a livepatch through the real paths.
. "$(dirname "$0")/lib.sh"

LP=test_klp_livepatch
REPL=test_klp_atomic_replace

begin "patched function seen through /proc/cmdline"
before=$(cat /proc/cmdline)
load $LP
expect_eq "$(cat /proc/cmdline)" "$LP: this has been live patched" "/proc/cmdline"
expect_eq "$(cat /proc/self/patch_state)" "-1" "patch_state at rest"
expect_eq "$(cat /proc/$$/patch_state)" "-1" "patch_state of the shell"
expect_eq "$(cat /sys/module/$LP/refcnt)" "1" "refcnt while enabled"
disable $LP
expect_eq "$(cat /proc/cmdline)" "$before" "/proc/cmdline after disable"
unload $LP
expect_log "$(loaded_block $LP; disabled_block $LP)"
echo ok

begin "attribute modes and values"
load $LP
for pair in ":drwxr-xr-x" "enabled:-rw-r--r--" "transition:-r--r--r--" "force:--w-------" \
	"replace:-r--r--r--" "vmlinux/patched:-r--r--r--"; do
	expect_eq "$(stat -c %A "$KLP/$LP/${pair%%:*}")" "${pair#*:}" "mode of ${pair%%:*}"
done
expect_eq "$(cat $KLP/$LP/enabled $KLP/$LP/transition $KLP/$LP/replace $KLP/$LP/vmlinux/patched | tr '\n' ' ')" \
	"1 0 0 1 " "values"
[[ -d "$KLP/$LP/vmlinux/cmdline_proc_show,1" ]] || fail "function directory missing"
disable $LP
unload $LP
echo ok

begin "bad writes are refused and change nothing"
load $LP
for bad in 2 -1 abc 1 yes; do
	err=$( (echo "$bad" > "$KLP/$LP/enabled") 2>&1 ) && fail "echo $bad > enabled succeeded"
	[[ "$err" == *"write error: Invalid argument" ]] || fail "echo $bad > enabled: $err"
done
err=$( (echo 1 > "$KLP/$LP/transition") 2>&1 ) && fail "transition was writable"
[[ "$err" == *"Permission denied" ]] || fail "transition write: $err"
err=$(sysctl -q kernel.ftrace_enabled=0 2>&1) && fail "ftrace_enabled could be turned off"
expect_eq "$err" 'sysctl: setting key "kernel.ftrace_enabled": Device or resource busy' "sysctl refusal"
expect_eq "$(sysctl --values kernel.ftrace_enabled)" "1" "ftrace_enabled after refusal"
expect_eq "$(cat $KLP/$LP/enabled)" "1" "enabled after bad writes"
disable $LP
unload $LP
echo ok

begin "atomic replace frees the patches it replaces"
load $LP
load $REPL replace=1
dirs=( "$KLP"/* )
wait_for "[[ \$(ls $KLP | wc -l) == 1 ]]" || fail "replaced patch still listed: ${dirs[*]}"
[[ "$(cat /proc/cmdline)" != *"live patched"* ]] || fail "replaced patch still in effect"
grep -q "$REPL: this has been live patched" /proc/meminfo || fail "replacement not in effect"
unload $LP
disable $REPL
unload $REPL
expect_log "$(loaded_block $LP; loaded_block $REPL; disabled_block $REPL)"
echo ok

begin "a module's proc entry appears under /proc and follows its patch"
insmod "$MODDIR/test_klp_mod_target.ko" || fail "insmod target"
expect_eq "$(cat /proc/test_klp_mod_target)" "test_klp_mod_target: original output" "before"
load test_klp_mod_patch
expect_eq "$(cat /proc/test_klp_mod_target)" "test_klp_mod_patch: this has been live patched" "patched"
disable test_klp_mod_patch
unload test_klp_mod_patch
unload test_klp_mod_target
[[ ! -e /proc/test_klp_mod_target ]] || fail "proc entry outlived its module"
echo ok

begin "the rest of /proc is still the host's"
diff <(echo same) <(echo same) >/dev/null || fail "process substitution through /dev/fd"
expect_eq "$(sysctl -n kernel.ostype)" "Linux" "host sysctl"
expect_eq "$(ps -p $$ -o pid= | tr -d " ")" "$$" "ps -p of this shell"
[[ -r /proc/cpuinfo ]] || fail "/proc/cpuinfo"
[[ "$(readlink /proc/self/exe)" == /* ]] || fail "/proc/self/exe"
echo ok
