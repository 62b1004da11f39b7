#!/bin/bash
# Set up everything livefs needs on a fresh Debian machine (as root), then run
# the demo or the test suite:   bash contrib/bootstrap.sh demo|test
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2;; esac
[[ $(id -u) == 0 ]] || { echo "$0: run as root (FUSE mounts with allow_other, mount namespaces)" >&2; exit 1; }

need=()
command -v fusermount >/dev/null || need+=(fuse)
{ ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2'; } || need+=(libfuse2)
command -v unshare >/dev/null || need+=(util-linux)
command -v sysctl >/dev/null || need+=(procps)
command -v readelf >/dev/null || need+=(binutils)
{ command -v modinfo || [[ -x /usr/sbin/modinfo ]] || [[ -x /sbin/modinfo ]]; } >/dev/null || need+=(kmod)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true

if [[ ! -x .venv/bin/python ]]; then
	python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

if [[ $what == demo ]]; then
	exec bash contrib/demo.sh
fi
exec python -m pytest -q tests
