#!/bin/bash
# Set up everything livefs needs on a fresh Debian machine (as root), then run
# the demo or the test suite:   bash contrib/bootstrap.sh demo|test
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2;; esac
[[ $(id -u) == 0 ]] || { echo "$0: run as root (it installs Debian packages); livefs itself then runs as any user" >&2; exit 1; }

need=()
# libfuse 3 (its fuse3 package also gives the fusermount command)
command -v fusermount3 >/dev/null || need+=(fuse3)
{ ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3'; } || need+=(libfuse3-3)
command -v unshare >/dev/null || need+=(util-linux)
command -v sysctl >/dev/null || need+=(procps)
command -v readelf >/dev/null || need+=(binutils)
{ command -v modinfo || [[ -x /usr/sbin/modinfo ]] || [[ -x /sbin/modinfo ]]; } >/dev/null || need+=(kmod)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# the installed-wheel checks use Debian's python3, which a normal user can run
[[ -x /usr/bin/python3 ]] || need+=(python3)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v useradd >/dev/null || need+=(passwd)
if ((${#need[@]})); then
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
# Debian's udev rule makes /dev/fuse 0666 so that users can mount; some
# containers create it 0600 and then only root could use livefs
if [[ -c /dev/fuse && $(stat -c %a /dev/fuse) != 666 ]]; then
	echo "making /dev/fuse usable by every user (0666, as udev does on Debian)"
	chmod 0666 /dev/fuse
fi

if [[ ! -x .venv/bin/python ]]; then
	python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

if [[ $what == demo ]]; then
	exec livefs demo
fi
python -m pytest -q tests
exec bash contrib/ci-installed.sh
