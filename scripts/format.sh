#!/bin/sh
# Formats, in place, the C lines changed since FORMAT_BASE (default: main;
# committed or not) with the committed .clang-format. Only changed lines:
# much of the code predates that config, and formatting whole files would
# rewrite thousands of lines nobody touched. New files count once added
# (git add -N FILE). FORMAT_ALL=1 formats every file (a large diff: review
# it before committing anything).
set -eu
cd "$(dirname "$0")/.."
if [ "${FORMAT_ALL:-0}" = 1 ]; then
	git ls-files '*.c' '*.h' | xargs clang-format -i
	exit 0
fi
fmt_diff=$(command -v clang-format-diff || command -v clang-format-diff-14 || true)
if [ -z "$fmt_diff" ]; then
	echo "format.sh: clang-format-diff is missing (Debian package clang-format)" >&2
	exit 1
fi
base=$(git merge-base "${FORMAT_BASE:-main}" HEAD)
git diff -U0 --no-color "$base" -- '*.c' '*.h' | "$fmt_diff" -p1 -i
