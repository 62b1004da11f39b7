#!/bin/bash
# livefs as its users get it: a wheel in a fresh venv, used from outside the
# checkout, as root and as a normal user (created here) with no sudo, no
# allow_other and no setuid helper of ours.  Called by bootstrap.sh test.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
USER_NAME=livefs-ci
BASE=$(mktemp -d /tmp/livefs-installed.XXXXXX)
trap 'rm -rf "$BASE"' EXIT
chmod 0755 "$BASE"
say() { printf '\n== %s\n' "$*"; }

say "wheel, venv outside the checkout"
"$SRC/.venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$BASE/dist" "$SRC"
# Debian's python3: a normal user can run it (a pyenv under /root is private)
/usr/bin/python3 -m venv "$BASE/venv"
"$BASE/venv/bin/python" -m pip install -q --disable-pip-version-check "$BASE"/dist/livefs-*.whl \
	"hypothesis>=6.80" "pytest>=7.4"
cp -r "$SRC/tests/shell" "$BASE/shell"
cp -r "$SRC/contrib/downstream" "$BASE/downstream"
export PATH="$BASE/venv/bin:$PATH"
cd "$BASE"
[[ $(python -c 'import livefs; print(livefs.__file__)') == "$BASE"/venv/* ]] || { echo "livefs not from the wheel"; exit 1; }

say "as root"
livefs --version
livefs demo
livefs selftest shell
python -m pytest -q -p no:cacheprovider downstream

say "as $USER_NAME (not root)"
id -u "$USER_NAME" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$USER_NAME"
rm -rf "$BASE/shell/test_modules" "$BASE/shell/test_klp-call_getpid"
chown -R "$USER_NAME:" "$BASE/shell" "$BASE/downstream"
chmod -R a+rX "$BASE/venv"
as_user() {
	su "$USER_NAME" -s /bin/bash -c "cd '$BASE' && export PATH='$BASE/venv/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' CI='${CI:-}' && $*"
}
as_user 'id -un; livefs --version'
as_user 'livefs selftest shell'
as_user 'python -m pytest -q -p no:cacheprovider downstream'
as_user 'livefs run -- bash -c "id -u; cat /proc/cmdline; cat /proc/self/patch_state; ls /sys/kernel/livepatch"'
echo "installed-wheel checks passed"
