#!/bin/sh
# Formats every C file in place with the committed .clang-format.
set -eu
cd "$(dirname "$0")/.."
git ls-files '*.c' '*.h' | xargs clang-format -i
