#!/bin/sh
# Builds kiln (release-ish, no sanitisers) into build/ after installing any
# missing Debian packages. Idempotent: re-running only rebuilds what changed.
#   scripts/build.sh && build/src/cli/kiln --help
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -f build/build.ninja ] || meson setup build --buildtype=debugoptimized >/dev/null
meson compile -C build >/dev/null
