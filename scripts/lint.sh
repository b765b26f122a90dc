#!/bin/sh
# Static analysis: cppcheck on the whole tree, clang-tidy on the C files that
# changed (against BASE, default: the previous commit; LINT_ALL=1 for all).
#   scripts/lint.sh BUILD_DIR
# BUILD_DIR must hold compile_commands.json (meson writes it).
set -eu
cd "$(dirname "$0")/.."
build=${1:-build}
base=${LINT_BASE:-HEAD~1}

status=0
echo "lint: cppcheck"
cppcheck --quiet --error-exitcode=1 --enable=warning,portability \
	--inline-suppr --std=c11 -D__GNUC__ -D_GNU_SOURCE -I src \
	--suppress=missingIncludeSystem --suppress=unknownMacro \
	src fuzz tests/unit || status=1

if [ "${LINT_ALL:-0}" = 1 ] || ! git rev-parse -q --verify "$base" >/dev/null 2>&1; then
	files=$(git ls-files 'src/*.c' 'fuzz/*.c' 'tests/unit/*.c')
else
	files=$(git diff --name-only --diff-filter=AM "$base" -- 'src/*.c' 'fuzz/*.c' 'tests/unit/*.c' || true)
fi
if [ -n "$files" ]; then
	echo "lint: clang-tidy on $(echo "$files" | wc -w) file(s)"
	# shellcheck disable=SC2086
	clang-tidy --quiet -p "$build" $files 2>/dev/null | grep -E 'warning:|error:' && status=1
fi
exit $status
