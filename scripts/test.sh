#!/bin/sh
# kiln's whole test run, as CI runs it (.ci/run calls exactly this):
#   1. installs missing Debian packages (scripts/deps.sh),
#   2. builds with AddressSanitizer + UndefinedBehaviorSanitizer and -Werror,
#   3. runs unit, system and fuzz-corpus tests (meson test),
#   4. runs every libFuzzer target briefly (clang build),
#   5. lints the changed files,
# and ends with one summary line: "N passed, M failed".
#
# Environment: KILN_FUZZ_SECONDS (default 20 per target), KILN_SKIP_FUZZ=1,
# KILN_SKIP_LINT=1, KILN_BUILD_DIR (default build/ci).
set -u
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/deps.sh || { echo "deps: installing packages failed"; echo "0 passed, 1 failed"; exit 1; }

build=${KILN_BUILD_DIR:-build/ci}
fuzzbuild=build/fuzz
passed=0
failed=0
failures=""

note() { printf '== %s\n' "$*"; }
fail() { failed=$((failed + 1)); failures="$failures\n  $1"; }
pass() { passed=$((passed + 1)); }

note "build ($build: ASan+UBSan, -Werror)"
if [ ! -f "$build/build.ninja" ]; then
	CC=${CC:-gcc} meson setup "$build" --buildtype=debug -Dwerror=true \
		-Db_sanitize=address,undefined -Dc_args=-fno-sanitize-recover=all \
		>/dev/null || { echo "meson setup failed"; echo "0 passed, 1 failed"; exit 1; }
fi
if ! meson compile -C "$build" >"$build/compile.log" 2>&1; then
	tail -50 "$build/compile.log"
	echo "0 passed, 1 failed"
	exit 1
fi

note "meson test (unit, system, fuzz corpus)"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
	meson test -C "$build" --print-errorlogs --no-rebuild ${KILN_TEST_ARGS:-}
counts=$(python3 - "$build/meson-logs/testlog.json" <<'PY'
import json, sys
ok = bad = 0
names = []
for line in open(sys.argv[1]):
    t = json.loads(line)
    if t["result"] in ("OK", "EXPECTEDFAIL", "SKIP"):
        ok += 1
    else:
        bad += 1
        names.append(t["name"])
print(ok, bad, " ".join(names))
PY
)
set -- $counts
passed=$((passed + $1))
failed=$((failed + $2))
shift 2
for n in "$@"; do failures="$failures\n  test $n"; done

if [ "${KILN_SKIP_FUZZ:-0}" != 1 ]; then
	note "fuzz (${KILN_FUZZ_SECONDS:-20}s per target, clang libFuzzer)"
	if [ ! -f "$fuzzbuild/build.ninja" ]; then
		CC=clang meson setup "$fuzzbuild" --buildtype=debugoptimized -Dfuzz=true \
			-Dsystem_tests=false -Db_sanitize=address,undefined \
			-Db_lundef=false >/dev/null || fail "fuzz build setup"
	fi
	if meson compile -C "$fuzzbuild" >"$fuzzbuild/compile.log" 2>&1; then
		for f in "$fuzzbuild"/fuzz/*-fuzz; do
			[ -x "$f" ] || continue
			name=$(basename "$f" -fuzz)
			work=$(mktemp -d)
			cp -r "fuzz/corpus/$name/." "$work/" 2>/dev/null || true
			if "$f" -max_total_time="${KILN_FUZZ_SECONDS:-20}" -timeout=10 \
				-rss_limit_mb=2048 -print_final_stats=1 "$work" \
				>"$fuzzbuild/$name.log" 2>&1; then
				pass
				grep -E '^stat::number_of_executed_units' "$fuzzbuild/$name.log" |
					sed "s/^/  $name: /"
			else
				tail -40 "$fuzzbuild/$name.log"
				fail "fuzz $name (crash inputs in $fuzzbuild)"
				cp crash-* leak-* timeout-* "$fuzzbuild/" 2>/dev/null
			fi
			rm -rf "$work"
		done
		rm -f crash-* leak-* timeout-* oom-* 2>/dev/null
	else
		tail -30 "$fuzzbuild/compile.log"
		fail "fuzz build"
	fi
fi

if [ "${KILN_SKIP_LINT:-0}" != 1 ]; then
	note "lint"
	if scripts/lint.sh "$build"; then pass; else fail "lint"; fi
fi

if [ "$failed" -ne 0 ]; then
	printf 'failures:%b\n' "$failures"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
