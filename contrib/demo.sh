#!/bin/bash
# A livepatch through the mock, shown with cat and echo: mount, patch, watch, unpatch, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
MNT=mountpoints/demo
mkdir -p "$MNT"
livefs mount "$MNT"
trap 'livefs umount "$MNT"' EXIT
export LIVEFS_ROOT=$MNT PATH="$PWD/contrib/shims:$PATH"
MODS=$(mktemp -d)
livefs modules export "$MODS" test_klp_livepatch >/dev/null
LP=$MNT/sys/kernel/livepatch/test_klp_livepatch

show() { printf '$ %s\n' "$*"; "$@"; }
show cat "$MNT/proc/cmdline"
show insmod "$MODS/test_klp_livepatch.ko"
while [[ $(cat "$LP/transition") != 0 ]]; do echo "transition: 1"; sleep 0.2; done
show cat "$LP/enabled" "$LP/transition"
show cat "$MNT/proc/cmdline"
echo '$ echo 0 > .../test_klp_livepatch/enabled'
echo 0 > "$LP/enabled"
while [[ -e $LP ]]; do sleep 0.1; done
show cat "$MNT/proc/cmdline"
show rmmod test_klp_livepatch
show dmesg --notime
rm -rf "$MODS"
