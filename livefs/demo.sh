#!/bin/bash
# A livepatch through the mock, shown with cat and echo: mount, patch, watch, unpatch, unmount.
# Run it with: livefs demo   (as root, or as a normal user for a mount of your own)
set -euo pipefail
WORK=$(mktemp -d)
MNT=$WORK/mnt
mkdir -p "$MNT"
livefs mount "$MNT"
trap 'livefs umount "$MNT"; rm -rf "$WORK"' EXIT
export LIVEFS_ROOT=$MNT PATH="$WORK/bin:$PATH"
livefs tools "$WORK/bin" >/dev/null
livefs modules export "$WORK/modules" test_klp_livepatch >/dev/null
LP=$MNT/sys/kernel/livepatch/test_klp_livepatch

show() { printf '$ %s\n' "$*"; "$@"; }
show cat "$MNT/proc/cmdline"
show insmod "$WORK/modules/test_klp_livepatch.ko"
show livefs wait --mount "$MNT"
show cat "$LP/enabled" "$LP/transition"
show cat "$MNT/proc/cmdline"
echo '$ echo 0 > .../test_klp_livepatch/enabled'
echo 0 > "$LP/enabled"
while [[ -e $LP ]]; do sleep 0.1; done
show cat "$MNT/proc/cmdline"
show rmmod test_klp_livepatch
show dmesg --notime
