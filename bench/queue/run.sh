#!/usr/bin/env bash
# kiln's job queue over real HTTP: submit -> lease (long-poll) -> complete,
# measured like the peers in ../shared/peers (Redis Streams, PostgreSQL):
# same P/C, window, 20 s sustained window after 2 s warm-up, wake latency at
# 500 jobs/s over 10 s, backlogs of 0 / 10k / 1M jobs (+ 1M claimable ahead).
# Starts one `kiln server` per run on 127.0.0.1:<free port> with a fresh state
# directory, stops it by PID, removes the directory.
#
#   bench/queue/run.sh                      # kiln only; RESULT lines + a table
#   PEERS=1 bench/queue/run.sh              # then the peers' harnesses, same knobs
#   REPS=1 BACKLOGS=0 AHEAD= TPUT_SECS=5 LAT_SECS=2 bench/queue/run.sh   # quick
#
# knobs (env): KILN=build/src/cli/kiln (an optimised build, not ASan)
#   REPS=3 BACKLOGS="0 10000 1000000" AHEAD="1000000" MODES="full"
#   (MODES may add "nofsync": --unsafe-no-fsync, for reference only)
#   P=4 C=4 WINDOW=1000 TPUT_SECS=20 WARM_SECS=2 LAT_SECS=10 LAT_RATE=500
#   OUT=<results file> PEERS=0 PEERS_DIR=../shared/peers (relative to the repo)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KILN=${KILN:-$ROOT/build/src/cli/kiln}
REPS=${REPS:-3}
MODES=${MODES:-"full"}
BACKLOGS=${BACKLOGS:-"0 10000 1000000"}
AHEAD=${AHEAD-"1000000"}
P=${P:-4} C=${C:-4} WINDOW=${WINDOW:-1000}
TPUT_SECS=${TPUT_SECS:-20} WARM_SECS=${WARM_SECS:-2} LAT_SECS=${LAT_SECS:-10} LAT_RATE=${LAT_RATE:-500}
PEERS=${PEERS:-0}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
[ -d "$PEERS_DIR" ] || PEERS_DIR=/work/shared/peers

[ -x "$KILN" ] || { echo "no kiln binary at $KILN (meson setup build && ninja -C build)" >&2; exit 2; }
if ldd "$KILN" 2>/dev/null | grep -q libasan; then
	echo "warning: $KILN is an ASan build; benchmark an optimised build" >&2
fi

WORK=$(mktemp -d /tmp/kiln-qbench.XXXXXX)
SRV_PID=""
stop_pid() { # PID: SIGTERM, wait up to 20 s, then SIGKILL; only the PID we started
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() { stop_pid "$SRV_PID"; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

OUT=${OUT:-$WORK/results.txt}
gcc -O2 -Wall -std=gnu11 -o "$WORK/qbench" "$HERE/qbench.c" -lpthread

{
	echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
	echo "kiln: $("$KILN" --version); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$OUT"

one_run() { # mode backlog kind rep
	local mode=$1 backlog=$2 kind=$3 rep=$4 dir args=()
	dir="$WORK/s-$mode-$backlog-$kind-$rep"
	mkdir -p "$dir"
	[ "$mode" = nofsync ] && args+=(--unsafe-no-fsync)
	"$KILN" --log-level warn server --listen 127.0.0.1:0 --state-dir "$dir/state" \
		--addr-file "$dir/addr" "${args[@]}" 2>>"$dir/server.log" &
	SRV_PID=$!
	for ((i = 0; i < 300; i++)); do [ -s "$dir/addr" ] && break; sleep 0.1; done
	[ -s "$dir/addr" ] || { echo "kiln server did not start:"; cat "$dir/server.log"; exit 1; }
	echo "--- kiln $mode backlog=$backlog ($kind) rep $rep/$REPS (addr $(cat "$dir/addr"), pid $SRV_PID), load $(cut -d' ' -f1 /proc/loadavg)"
	KILN_TOKEN=$(cat "$dir/state/admin.token") \
	timeout 1800 "$WORK/qbench" --addr "$(cat "$dir/addr")" --producers "$P" --consumers "$C" \
		--window "$WINDOW" --tput-secs "$TPUT_SECS" --warmup-secs "$WARM_SECS" \
		--lat-secs "$LAT_SECS" --lat-rate "$LAT_RATE" --backlog "$backlog" \
		--backlog-kind "$kind" --server-pid "$SRV_PID" --label "fsync-$mode" | tee -a "$OUT"
	stop_pid "$SRV_PID"
	SRV_PID=""
	rm -rf "$dir"
}

for mode in $MODES; do
	for backlog in $BACKLOGS; do
		for rep in $(seq 1 "$REPS"); do one_run "$mode" "$backlog" other "$rep"; done
	done
	for backlog in $AHEAD; do
		for rep in $(seq 1 "$REPS"); do one_run "$mode" "$backlog" ahead "$rep"; done
	done
done

if [ "$PEERS" = 1 ]; then
	# The peers, one after the other (never two harnesses at once on 2 cores).
	export REPS P C WINDOW TPUT_SECS WARM_SECS LAT_SECS LAT_RATE BACKLOGS
	MODES=always AHEAD="$AHEAD" OUT="$OUT" "$PEERS_DIR/redis/run.sh" >/dev/null
	BACKLOGS="$BACKLOGS" AHEAD="$AHEAD" OUT="$OUT" "$PEERS_DIR/pg/run.sh" >/dev/null
fi

echo
echo "== job queue: P=$P producers, C=$C consumers, window $WINDOW, ${TPUT_SECS}s sustained, wake latency at $LAT_RATE jobs/s =="
python3 "$PEERS_DIR/common/summarize.py" "$OUT"
[ -n "${KEEP:-}" ] && cp "$OUT" "$KEEP"
exit 0
