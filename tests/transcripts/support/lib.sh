#!/bin/bash
# Scenario helpers for tests/transcripts/scenarios/*.sh, sourced by them as
# "${ORACLE:-/oracle}/lib.sh".  Written for this project; what each helper
# prints follows, line for line, the format of the recorded transcripts in
# tests/transcripts/6.12 (see support/README.rst), so that a replay under
# livefs can be compared with them.  The syscall-level probes are done by
# the program "sysio" next to this file.

KVER=$(uname -r)
LP=/sys/kernel/livepatch
MODDIR=/lib/modules/$KVER/extra
__lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SYSIO=${SYSIO:-$__lib_dir/sysio}
unset __lib_dir

# Indent every line of stdin by two blanks (a last line without a newline
# stays without one).
__indent() { sed -e 's/^/  /'; }

# --- the kernel log ----------------------------------------------------------

# Lines of `dmesg` already shown; kmsg prints the ones after them.
__kmsg_shown=$(dmesg | wc -l)

# kmsg: the kernel's messages since the previous call, without timestamps,
# each as "  dmesg| TEXT".
kmsg() {
    local -a log
    local i
    mapfile -t log < <(dmesg --notime)
    for ((i = __kmsg_shown; i < ${#log[@]}; i++)); do
        printf '  dmesg| %s\n' "${log[i]}"
    done
    # never go back: a shorter log (cleared) shows nothing until it grows
    if ((${#log[@]} > __kmsg_shown)); then
        __kmsg_shown=${#log[@]}
    fi
}

# --- commands ------------------------------------------------------------------

# __show PROMPT SHELL COMMAND: print "PROMPT COMMAND", run COMMAND with SHELL
# -c (stderr into stdout, indented), then "[rc=N]" and the new kernel messages.
__show() {
    local prompt=$1 shell=$2
    shift 2
    printf '%s %s\n' "$prompt" "$*"
    $shell -c "$*" 2>&1 | __indent
    printf '  [rc=%s]\n' "${PIPESTATUS[0]}"
    kmsg
}

run() { __show '$' bash "$*"; }                 # run 'COMMAND' in bash
bbrun() { __show 'busybox-sh$' 'busybox sh' "$*"; }   # the same in busybox sh

# ins MODULE [PARAM=VALUE...]: insmod the module from $MODDIR
ins() {
    local mod=$1
    shift
    run "insmod $MODDIR/$mod.ko $*"
}

# --- syscall-level probes --------------------------------------------------------

# __probe TITLE KMSG SYSIO-ARGS...: print TITLE, the probe's lines indented,
# its exit status and, if KMSG is 1, the new kernel messages.  SETTLE=S
# (seconds) waits that long before reading them: for a write that wakes a
# kthread out of msleep(100), whose message comes up to 100 ms later on any
# kernel (prints nothing itself, so the output is the same either way).
__probe() {
    local title=$1 with_kmsg=$2
    shift 2
    printf '%s\n' "$title"
    "$SYSIO" "$@" | __indent
    printf '  [rc=%s]\n' "${PIPESTATUS[0]}"
    if [ -n "${SETTLE:-}" ]; then sleep "$SETTLE"; fi
    if [ "$with_kmsg" = 1 ]; then kmsg; fi
}

w() { __probe "sysio w $1 '$2'" 1 w "$1" "$2"; }          # write DATA as is
wn() { __probe "sysio wn $1 '$2\\n'" 1 wn "$1" "$2"; }    # write DATA and a newline
r() { __probe "sysio r $1" 0 r "$1"; }                     # one read of 4096 bytes

# --- state dumps -------------------------------------------------------------------

# lpdump: every entry under /sys/kernel/livepatch in sorted order: directories
# and links with their mode, files with mode, size and content (newlines
# shown as '|', read errors included).
lpdump() {
    echo "--- lpdump $LP"
    if ! [ -d "$LP" ]; then
        echo "  (no $LP)"
        return
    fi
    (
        cd "$LP" || exit
        local entry mode
        find . -mindepth 1 | sort | while IFS= read -r entry; do
            mode=$(stat -c %A "$entry")
            if [ -L "$entry" ]; then
                echo "  $mode $entry -> $(readlink "$entry")"
            elif [ -d "$entry" ]; then
                echo "  $mode $entry/"
            else
                printf '  %s %4s %s = %s\n' "$mode" "$(stat -c %s "$entry")" "$entry" \
                    "$(cat "$entry" 2>&1 | tr '\n' '|')"
            fi
        done
    )
    if [ -z "$(ls -A "$LP")" ]; then echo "  (empty)"; fi
}

# pstate [PID...]: how many tasks have each patch_state value, then the
# comm and patch_state of each PID given.
pstate() {
    local pid
    echo "--- /proc/*/patch_state histogram (value count)"
    cat /proc/[0-9]*/patch_state 2>/dev/null | sort | uniq -c | __indent
    for pid in "$@"; do
        if [ -z "$pid" ]; then continue; fi
        echo "  pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)): patch_state=$(cat "/proc/$pid/patch_state" 2>&1)"
    done
}

# --- waiting (polls every 100 ms) ------------------------------------------------------

# wait_transition_done PATCH [SECONDS]: until PATCH's transition file is not 1
wait_transition_done() {
    local patch=$1 limit=${2:-15} n
    for ((n = 1; n <= limit * 10; n++)); do
        if [ "$(cat "$LP/$patch/transition" 2>/dev/null)" != 1 ]; then
            note "transition of $patch not pending after ~$((n * 100)) ms"
            return 0
        fi
        sleep 0.1
    done
    note "transition of $patch STILL pending after ${limit}s"
    return 1
}

# wait_gone PATCH: until PATCH's directory is gone (at most 10 s)
wait_gone() {
    local n
    for ((n = 1; n <= 100; n++)); do
        if ! [ -d "$LP/$1" ]; then
            note "$LP/$1 gone after ~$((n * 100)) ms"
            return 0
        fi
        sleep 0.1
    done
    note "$LP/$1 still present after 10s"
}

# --- layout ----------------------------------------------------------------------------

section() { printf '\n=================== %s ===================\n' "$*"; }
note() { echo "# $*"; }

# header NAME: the scenario's name, the machine, and the script's leading
# comment (its "# " lines, unindented by one level)
header() {
    echo "oracle scenario: $1"
    echo "kernel: $(uname -a)"
    echo "boot cmdline: $ORACLE_BOOT_CMDLINE"
    echo "bash: $BASH_VERSION   kmod: $(kmod --version | head -n 1)"
    sed -n -e 's/^# /  /p' "$0"
}

# footer: the final state and the whole kernel log
footer() {
    section "final state"
    lpdump
    run "lsmod"
    run "cat /proc/sys/kernel/tainted"
    section "full dmesg (with timestamps)"
    dmesg
}
