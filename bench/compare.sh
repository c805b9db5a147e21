#!/usr/bin/env bash
# bench-compare: chatgg against a plain Node `ws` broadcast server, side by
# side in one invocation, same tool, same settings (issue 5's targets).
#
# Both servers run at once, each pinned to CPU 0 (chatgg with GOMAXPROCS=1
# and one event loop); the tool is pinned to CPU 1. Tests alternate between
# the servers so that drift in machine load hits both alike. Fan-out, echo
# and ramp first run a short warm-up that is not measured (connections,
# caches, Node's JIT):
#
#   fanout  raw mode, 1000 subscribers, 64-byte payloads, 40 000 deliveries/s, 10 s
#           (and chatgg once more through /ws JSON: the JSON-over-raw CPU ratio)
#   echo    100 connections on /echo, 8 frames in flight each (enough to keep
#           a server busy: with one, both sides wait for each other), 10 s
#   idle    10 000 connections, server RSS per connection
#   ramp    fan-out from 5 000 deliveries/s, ×1.5 per 3 s step, until p99 > 100 ms
#           or a loss (100 ms, not 50: on a shared two-core machine other
#           work alone pushes p99 past 50 ms; a server that cannot keep up
#           is over 100 ms within a step anyway)
#
# Then `bench compare` prints the table. Results (JSON), server logs and the
# table are kept in $OUT (default artifacts/bench-compare/<time>). Every
# step is bounded by `timeout`; the whole run takes under 5 minutes.
#
# Environment: OUT, DURATION (10s), SUBS (1000), RATE (40000 deliveries/s),
# ECHO_CONNS (100), ECHO_INFLIGHT (8), IDLE_CONNS (10000), RAMP_START (5000),
# RAMP_FACTOR (1.5), RAMP_STEP (3s), RAMP_STEPS (12), RAMP_MAX_P99 (100ms), SERVER_CPU (0),
# TOOL_CPU (1), CHATGG_BIN (a chatgg binary to use instead of building
# ./cmd/chatgg).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/artifacts/bench-compare/$(date -u +%Y%m%dT%H%M%SZ)}
DURATION=${DURATION:-10s}
SUBS=${SUBS:-1000}
RATE=${RATE:-40000}
ECHO_CONNS=${ECHO_CONNS:-100}
ECHO_INFLIGHT=${ECHO_INFLIGHT:-8}
IDLE_CONNS=${IDLE_CONNS:-10000}
RAMP_START=${RAMP_START:-5000}
RAMP_FACTOR=${RAMP_FACTOR:-1.5}
RAMP_STEP=${RAMP_STEP:-3s}
RAMP_STEPS=${RAMP_STEPS:-12}
RAMP_MAX_P99=${RAMP_MAX_P99:-100ms}
SERVER_CPU=${SERVER_CPU:-0}
TOOL_CPU=${TOOL_CPU:-1}
GO=${GO:-go}

mkdir -p "$OUT"
log() { printf '%s bench-compare: %s\n' "$(date +%T)" "$*" >&2; }

# free_port VAR: a free loopback port below the ephemeral range.
# shellcheck source=bench/ports.sh
. "$ROOT/bench/ports.sh"

wait_port() { # port seconds
	local deadline=$((SECONDS + $2))
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		if ((SECONDS > deadline)); then
			echo "bench-compare: nothing listens on $1 after $2 s" >&2
			return 1
		fi
		sleep 0.1
	done
}

PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
}
trap cleanup EXIT

if [[ ! -d tools/node/node_modules/ws ]]; then
	log "installing tools/node (npm ci)"
	npm ci --prefix tools/node --ignore-scripts --no-audit --no-fund >&2
fi

if [[ -n "${CHATGG_BIN:-}" ]]; then
	log "using chatgg $CHATGG_BIN"
	cp "$CHATGG_BIN" "$OUT/chatgg"
else
	log "building chatgg"
	$GO build -o "$OUT/chatgg" ./cmd/chatgg
fi
log "building the tool"
$GO build -o "$OUT/bench" ./bench

free_port WS_PORT
free_port HTTP_PORT
free_port NODE_PORT
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log "starting chatgg on 127.0.0.1:$WS_PORT (CPU $SERVER_CPU, GOMAXPROCS=1, 1 loop)"
GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$OUT/chatgg" --ws-addr "127.0.0.1:$WS_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
	--data-dir "$OUT/data" --loops 1 --log-level warn >"$OUT/chatgg.log" 2>&1 &
CHATGG_PID=$!
PIDS+=("$CHATGG_PID")
log "starting the Node ws server on 127.0.0.1:$NODE_PORT (CPU $SERVER_CPU)"
taskset -c "$SERVER_CPU" node bench/ws-server/server.js "$NODE_PORT" >"$OUT/ws-server.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")
wait_port "$WS_PORT" 20
wait_port "$NODE_PORT" 20

# run NAME SERVER(chatgg|ws) ARGS...: the tool pinned to TOOL_CPU, JSON kept.
run() {
	local name=$1 server=$2
	shift 2
	local port=$WS_PORT pid=$CHATGG_PID
	if [[ $server == ws ]]; then
		port=$NODE_PORT pid=$NODE_PID
	fi
	log "$name on $server: $*"
	local rc=0
	timeout 150 taskset -c "$TOOL_CPU" "$OUT/bench" "$@" --url "ws://127.0.0.1:$port" --pid "$pid" \
		--json --progress off >"$OUT/$server-$name.json" 2>>"$OUT/bench.log" || rc=$?
	if ((rc != 0)); then
		log "$name on $server: exit $rc (kept: $OUT/$server-$name.json, $OUT/bench.log)"
	fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "bench-compare: the $server server died; see $OUT/$server*.log" >&2
		exit 1
	fi
}

FANOUT=(fanout --proto raw --subscribers "$SUBS" --publishers 1 --delivery-rate "$RATE" --duration "$DURATION" --size 64 --warmup 2s)
ECHO=(echo --conns "$ECHO_CONNS" --inflight "$ECHO_INFLIGHT" --duration "$DURATION" --size 64 --warmup 1s)
IDLE=(idle --proto raw --conns "$IDLE_CONNS" --hold 3s --connect-concurrency 200)
RAMP=(ramp --proto raw --subscribers "$SUBS" --publishers 10 --delivery-rate "$RAMP_START" --factor "$RAMP_FACTOR"
	--step-duration "$RAMP_STEP" --max-steps "$RAMP_STEPS" --max-p99 "$RAMP_MAX_P99" --size 64 --warmup 2s)

run fanout chatgg "${FANOUT[@]}"
run fanout ws "${FANOUT[@]}"
FANOUT[2]=ws
run fanout-ws chatgg "${FANOUT[@]}"
run echo chatgg "${ECHO[@]}"
run echo ws "${ECHO[@]}"
run ramp chatgg "${RAMP[@]}"
run ramp ws "${RAMP[@]}"
# Last: closing 10 000 connections leaves a server work to do for a while.
run idle chatgg "${IDLE[@]}"
run idle ws "${IDLE[@]}"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
	echo "bench-compare $(date -u +%FT%TZ)"
	echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') × $(nproc); server on CPU $SERVER_CPU (chatgg GOMAXPROCS=1, --loops 1), tool on CPU $TOOL_CPU"
	echo "node $(node --version), ws $(node -p "require('./tools/node/node_modules/ws/package.json').version"), $($GO version | cut -d' ' -f3)"
	echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER (other work on this machine skews numbers)"
	echo "settings: raw mode, $SUBS subscribers, 64-byte payloads; fanout $RATE deliveries/s for $DURATION; echo $ECHO_CONNS conns × $ECHO_INFLIGHT in flight; idle $IDLE_CONNS conns; ramp from $RAMP_START ×$RAMP_FACTOR per $RAMP_STEP, p99 ≤ $RAMP_MAX_P99"
	echo
	"$OUT/bench" compare --dir "$OUT"
} | tee "$OUT/table.txt"
log "results in $OUT"
