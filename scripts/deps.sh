#!/bin/sh
# Installs the Debian packages kiln's build, tests and benchmarks need.
# Idempotent and quiet when everything is present.
#
#   scripts/deps.sh          build + tests (what README and .ci/run use)
#   scripts/deps.sh bench    also the peers the benchmarks compare against
set -eu

BUILD="meson ninja-build gcc make clang libclang-rt-14-dev pkg-config
 libyaml-dev libjansson-dev libsqlite3-dev libmicrohttpd-dev
 libcurl4-openssl-dev libseccomp-dev libcap-dev libsodium-dev libncurses-dev
 libpq-dev zlib1g-dev musl-tools"
TEST="git python3 python3-yaml clang-tidy clang-format cppcheck curl iproute2
 util-linux procps tmux prometheus sqlite3 uidmap busybox-static"
BENCH="bubblewrap crun runc hyperfine redis-server postgresql libhiredis-dev"

want="$BUILD $TEST"
[ "${1:-}" = bench ] && want="$want $BENCH"

missing=""
for p in $want; do
	if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "deps: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
