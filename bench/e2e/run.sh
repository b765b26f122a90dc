#!/usr/bin/env bash
# kiln end to end (docs/benchmarks.md): a `kiln server` and a `kiln agent`
# (2 slots, then 8 for the RSS with 8 running jobs) on 127.0.0.1:<free
# port>, fresh state directories; bench/e2e/e2e.py drives them. Every
# process is stopped by its PID; the directories are removed.
#
#   bench/e2e/run.sh                 # 500 jobs one at a time, 1000 for jobs/s
#   JOBS=100 TPUT_JOBS=200 bench/e2e/run.sh    # quick
#
# knobs (env): KILN=build/src/cli/kiln (an optimised build, not ASan)
#   JOBS=500 TPUT_JOBS=1000 SLOTS=2 FSYNC=1 (0: the server's --unsafe-no-fsync)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KILN=${KILN:-$ROOT/build/src/cli/kiln}
JOBS=${JOBS:-500}
TPUT_JOBS=${TPUT_JOBS:-1000}
SLOTS=${SLOTS:-2}
FSYNC=${FSYNC:-1}
export KILN_INIT=${KILN_INIT:-$ROOT/build/src/init/kiln-init}

[ -x "$KILN" ] || { echo "no kiln binary at $KILN (meson setup build && ninja -C build)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (the agent's sandboxes)" >&2; exit 2; }
if ldd "$KILN" 2>/dev/null | grep -q libasan; then
	echo "warning: $KILN is an ASan build; benchmark an optimised build" >&2
fi

WORK=$(mktemp -d /tmp/kiln-e2e.XXXXXX)
SRV_PID="" AGENT_PID=""
stop_pid() { # PID: SIGTERM, wait up to 20 s, then SIGKILL; only the PIDs we started
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
CGROUP_PARENT=/kiln-bench-e2e-$$
cleanup() {
	stop_pid "$AGENT_PID"
	stop_pid "$SRV_PID"
	for d in /sys/fs/cgroup/*/"${CGROUP_PARENT#/}" /sys/fs/cgroup/"${CGROUP_PARENT#/}"; do
		[ -d "$d" ] && rmdir "$d" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() {
	local nofsync=()
	[ "$FSYNC" = 1 ] || nofsync=(--unsafe-no-fsync)
	"$KILN" --log-level warn server --listen 127.0.0.1:0 --state-dir "$WORK/server" \
		--addr-file "$WORK/addr" "${nofsync[@]}" >"$WORK/server.log" 2>&1 &
	SRV_PID=$!
	for ((i = 0; i < 300; i++)); do [ -s "$WORK/addr" ] && break; sleep 0.05; done
	ADDR=$(cat "$WORK/addr")
	# The admin token the server wrote on its first start (agent and client use it).
	TOKEN=$(cat "$WORK/server/admin.token")
	export KILN_TOKEN=$TOKEN
}
start_agent() { # SLOTS
	"$KILN" --log-level warn agent --server "$ADDR" --state-dir "$WORK/agent" --name bench \
		--slots "$1" --cgroup-parent "$CGROUP_PARENT" >>"$WORK/agent.log" 2>&1 &
	AGENT_PID=$!
	for ((i = 0; i < 300; i++)); do
		curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/v1/agents" 2>/dev/null |
			grep -q "\"slots\":$1,.*\"online\":true" && break
		sleep 0.05
	done
}
fail() { tail -n 20 "$WORK/agent.log" "$WORK/server.log" >&2; exit 1; }

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), kernel $(uname -r)"
echo "kiln: $("$KILN" --version); load average before: $(cut -d' ' -f1-3 /proc/loadavg); server fsync: $FSYNC"
start_server
start_agent "$SLOTS"
python3 "$HERE/e2e.py" "$ADDR" "$AGENT_PID" --jobs "$JOBS" --tput-jobs "$TPUT_JOBS" --phase main || fail
stop_pid "$AGENT_PID"
start_agent 8
python3 "$HERE/e2e.py" "$ADDR" "$AGENT_PID" --phase rss8 || fail
[ -n "${DEBUG:-}" ] && tail -n 30 "$WORK/agent.log"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
