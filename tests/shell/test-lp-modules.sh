#!/bin/bash
# Module loading around livepatches: late targets, callbacks, loader errors.
. "$(dirname "$0")/lib.sh"

DEMO=test_klp_callbacks_demo
TARGET=test_klp_callbacks_mod

begin "a target loaded after its patch is patched on arrival"
load $DEMO
expect_eq "$(cat $KLP/$DEMO/$TARGET/patched)" "0" "patched before the target"
insmod "$MODDIR/$TARGET.ko" || fail "insmod $TARGET"
expect_eq "$(cat $KLP/$DEMO/$TARGET/patched)" "1" "patched after insmod"
unload $TARGET
expect_eq "$(cat $KLP/$DEMO/$TARGET/patched)" "0" "patched after rmmod"
disable $DEMO
unload $DEMO
live="[MODULE_STATE_LIVE] Normal state"
expect_log "$(printf '%s\n' "livepatch: enabling patch '$DEMO'" "$DEMO: pre_patch_callback: vmlinux" \
	"livepatch: '$DEMO': starting patching transition" "$DEMO: post_patch_callback: vmlinux" \
	"livepatch: '$DEMO': patching complete" \
	"livepatch: applying patch '$DEMO' to loading module '$TARGET'" \
	"$DEMO: pre_patch_callback: $TARGET -> [MODULE_STATE_COMING] Full formed, running module_init" \
	"$DEMO: post_patch_callback: $TARGET -> [MODULE_STATE_COMING] Full formed, running module_init" \
	"$TARGET: test_klp_callbacks_mod_init" "$TARGET: test_klp_callbacks_mod_exit" \
	"$DEMO: pre_unpatch_callback: $TARGET -> [MODULE_STATE_GOING] Going away" \
	"livepatch: reverting patch '$DEMO' on unloading module '$TARGET'" \
	"$DEMO: post_unpatch_callback: $TARGET -> [MODULE_STATE_GOING] Going away" \
	"$DEMO: pre_unpatch_callback: vmlinux" "livepatch: '$DEMO': starting unpatching transition" \
	"$DEMO: post_unpatch_callback: vmlinux" "livepatch: '$DEMO': unpatching complete")"
echo ok

begin "loader errors read like kmod's"
out=$(insmod "$MODDIR/$DEMO.ko" pre_patch_ret=-19 2>&1) && fail "failing pre_patch loaded"
expect_eq "$out" "insmod: ERROR: could not insert module $MODDIR/$DEMO.ko: No such device" "insmod error"
[[ ! -e $KLP/$DEMO && ! -e /sys/module/$DEMO ]] || fail "failed load left state behind"
load test_klp_livepatch
out=$(insmod "$MODDIR/test_klp_livepatch.ko" 2>&1) && fail "double insmod"
expect_eq "$out" "insmod: ERROR: could not insert module $MODDIR/test_klp_livepatch.ko: File exists" "EEXIST"
out=$(rmmod test_klp_livepatch 2>&1) && fail "rmmod of an enabled patch"
expect_eq "$out" "rmmod: ERROR: Module test_klp_livepatch is in use" "rmmod in use"
disable test_klp_livepatch
unload test_klp_livepatch
echo ok
