#!/usr/bin/env bash
# store-compare: publish-to-stored through chatgg against its store alone
# (issue 5: with Redis and the CouchDB-compatible server, chatgg stores at
# least 0.9 times the rate of the store alone).
#
#   1. the store alone: a fresh pouchdb-server --in-memory, and `bench store`
#      writing MESSAGES documents shaped like chatgg's (storage/couch.go) in
#      _bulk_docs batches of BATCH, WORKERS requests in flight (as many as
#      chatgg's workers keep);
#   2. chatgg: a fresh pouchdb-server again (so that neither run pays for
#      the other's heap), redis-server, and chatgg with --batch-size BATCH:
#      one `serve` node and WORKERS `worker` processes (ROLES=serve), or one
#      `all` node and WORKERS-1 workers (ROLES=all);
#   3. `bench e2e` publishing the same number of messages at SATURATE times
#      the store's rate (at most MAX_RATE), so the store, not the publisher,
#      is the limit, sampling the workers' /metrics and GET /v1/queue
#      (--worker-metrics). With VERIFY=end (the default) it reads history
#      only once the workers have stored everything (--verify-at-end), then
#      checks every message: the store alone does not read back either, and
#      on PouchDB Server a read competes with the writes for its one
#      thread. VERIFY=poll reads history every POLL while storing;
#   4. unless LATENCY_LOAD=0, `bench e2e` once more for LATENCY_DURATION at
#      LATENCY_LOAD times the rate step 3 reached: latency without a backlog;
#   5. `bench compare --store` prints the table, with the CPU each process
#      used during step 3 and the load average.
#
# Every process it starts is stopped by PID at exit. A run takes under a
# minute; every step is bounded by `timeout` out of a budget of BUDGET
# seconds (170) for the whole run. Results (JSON, logs, table.txt) stay in
# $OUT (default artifacts/store-compare/<time>).
#
# Environment: OUT, MESSAGES (60000), BATCH (500), WORKERS (2), SIZE (64),
# SATURATE (1.2), MAX_RATE (50000), VERIFY (end), PER_PUBLISHER (500 publishes/s per
# connection: chatgg allows 1000 by default), POLL (50ms), ROLES (serve),
# LATENCY_LOAD (0.5), LATENCY_DURATION (5s), PIN (1: pouchdb-server on
# CPU STORE_CPU (0), everything else on OTHER_CPU (1), so that the store
# has the same core in both runs and chatgg's own CPU, which a deployment
# gives its own hosts, does not come out of it; 0: nothing pinned, so the
# store alone gets both cores and e2e shares them with chatgg, Redis and
# the tool), CHATGG_BIN (a chatgg binary to use instead of building
# ./cmd/chatgg), GO.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/artifacts/store-compare/$(date -u +%Y%m%dT%H%M%SZ)}
MESSAGES=${MESSAGES:-60000}
BATCH=${BATCH:-500}
WORKERS=${WORKERS:-2}
SIZE=${SIZE:-64}
SATURATE=${SATURATE:-1.2}
MAX_RATE=${MAX_RATE:-50000}
PER_PUBLISHER=${PER_PUBLISHER:-500}
POLL=${POLL:-50ms}
VERIFY=${VERIFY:-end}
ROLES=${ROLES:-serve}
LATENCY_LOAD=${LATENCY_LOAD:-0.5}
LATENCY_DURATION=${LATENCY_DURATION:-5s}
BUDGET=${BUDGET:-170}
PIN=${PIN:-1}
STORE_CPU=${STORE_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}
GO=${GO:-go}
POUCHDB=$ROOT/tools/node/node_modules/.bin/pouchdb-server

# left N: N seconds, or what is left of the budget when less (at least 1).
left() {
	local rest=$((BUDGET - SECONDS))
	((rest > 0)) || die "out of time (BUDGET=$BUDGET s)"
	echo $(($1 < rest ? $1 : rest))
}

log() { printf '%s store-compare: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $ROLES == serve || $ROLES == all ]] || die "ROLES must be serve or all"
[[ $VERIFY == end || $VERIFY == poll ]] || die "VERIFY must be end or poll"
((WORKERS >= 1)) || die "WORKERS must be at least 1"
command -v redis-server >/dev/null || die "redis-server not found: run make services"
command -v node >/dev/null || die "node not found: run make services"
command -v jq >/dev/null || die "jq not found"
[[ -x $POUCHDB ]] || die "$POUCHDB not found: run make services"

mkdir -p "$OUT"
TMP=$(mktemp -d)

# ON_STORE and ON_OTHER prefix commands to pin them when PIN=1 (taskset
# execs the command: $! stays its PID).
ON_STORE=() ON_OTHER=()
if [[ $PIN == 1 ]]; then
	ON_STORE=(taskset -c "$STORE_CPU") ON_OTHER=(taskset -c "$OTHER_CPU")
fi

# PIDS are the processes this script started, stopped by PID at exit.
PIDS=()
cleanup() {
	local pid end=$((SECONDS + 15))
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT

# stop PID: stop one process this script started and wait for it.
stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local keep=() pid
	for pid in "${PIDS[@]}"; do
		[[ $pid == "$1" ]] || keep+=("$pid")
	done
	PIDS=("${keep[@]}")
}

# free_port VAR: a free loopback port below the ephemeral range.
# shellcheck source=bench/ports.sh
. "$ROOT/bench/ports.sh"

# wait_http URL SECONDS PID: until URL answers 200, while PID lives.
wait_http() {
	local deadline=$((SECONDS + $(left "$2")))
	until curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; do
		kill -0 "$3" 2>/dev/null || die "process $3 exited before $1 answered; see $OUT/*.log"
		((SECONDS <= deadline)) || die "$1 does not answer after $2 s"
		sleep 0.1
	done
}

# wait_tcp PORT SECONDS PID: until something listens on PORT, while PID lives.
wait_tcp() {
	local deadline=$((SECONDS + $(left "$2")))
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		kill -0 "$3" 2>/dev/null || die "process $3 exited before listening on $1; see $OUT/*.log"
		((SECONDS <= deadline)) || die "nothing listens on $1 after $2 s"
		sleep 0.1
	done
}

# cpu_ticks PID: utime+stime so far, in clock ticks. Fields are counted
# after the command name's last ')'.
cpu_ticks() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	s=${s##*) }
	# shellcheck disable=SC2086 # split into fields on purpose
	set -- $s
	echo $((${12} + ${13}))
}

if [[ -n "${CHATGG_BIN:-}" ]]; then
	log "using chatgg $CHATGG_BIN"
	cp "$CHATGG_BIN" "$OUT/chatgg"
else
	log "building chatgg"
	timeout "$(left 120)" "$GO" build -o "$OUT/chatgg" ./cmd/chatgg
fi
log "building the tool"
timeout "$(left 120)" "$GO" build -o "$OUT/bench" ./bench

free_port COUCH_PORT
free_port REDIS_PORT
POUCH_PID=

# start_pouch NAME: a fresh, empty pouchdb-server --in-memory on COUCH_PORT,
# in a directory of its own (it writes log.txt and config.json there).
start_pouch() {
	if [[ -n $POUCH_PID ]]; then
		stop "$POUCH_PID"
	fi
	local dir=$TMP/pouch-$1
	mkdir -p "$dir"
	(cd "$dir" && exec "${ON_STORE[@]}" "$POUCHDB" --in-memory --host 127.0.0.1 --port "$COUCH_PORT" --dir "$dir" \
		--config "$dir/config.json" --no-color) >"$OUT/pouchdb-$1.log" 2>&1 &
	POUCH_PID=$!
	PIDS+=("$POUCH_PID")
	wait_http "http://127.0.0.1:$COUCH_PORT/" 30 "$POUCH_PID"
	log "pouchdb-server pid $POUCH_PID on 127.0.0.1:$COUCH_PORT ($1)"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# 1. The store alone.
start_pouch store
log "store alone: $MESSAGES documents, batches of $BATCH, $WORKERS in flight"
rc=0
timeout "$(left 100)" "${ON_OTHER[@]}" "$OUT/bench" store --couch-url "http://127.0.0.1:$COUCH_PORT/store" --batch "$BATCH" --inflight "$WORKERS" \
	--messages "$MESSAGES" --size "$SIZE" --duration 90s --pid "$POUCH_PID" --json --progress off \
	>"$OUT/store.json" 2>>"$OUT/bench.log" || rc=$?
((rc == 0)) || die "bench store: exit $rc (see $OUT/store.json, $OUT/bench.log)"
STORE_RATE=$(jq -r '.store.docs_per_sec' "$OUT/store.json")
STORED=$(jq -r '.store.written + .store.conflicts' "$OUT/store.json")
log "store alone: $(printf '%.0f' "$STORE_RATE") docs/s"

# 2. chatgg on a fresh store.
start_pouch chatgg
"${ON_OTHER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" --daemonize no \
	>"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_tcp "$REDIS_PORT" 20 "$REDIS_PID"
# No drain period or close window: nothing balances these nodes, and they
# should stop at once.
COMMON=(--redis-url "redis://127.0.0.1:$REDIS_PORT/0" --couchdb-url "http://127.0.0.1:$COUCH_PORT/chatgg"
	--batch-size "$BATCH" --log-level warn --drain-period 0s --close-window 0s)
free_port WS_PORT
free_port HTTP_PORT
NAMES=() CPIDS=() METRICS=()
FRONT=serve
NEXT_WORKER=1
if [[ $ROLES == all ]]; then
	FRONT=all
	NEXT_WORKER=2 # the all node runs worker 1
fi
"${ON_OTHER[@]}" "$OUT/chatgg" "$FRONT" --ws-addr "127.0.0.1:$WS_PORT" --http-addr "127.0.0.1:$HTTP_PORT" --data-dir "$TMP/data-front" \
	"${COMMON[@]}" >"$OUT/chatgg-$FRONT.log" 2>&1 &
PIDS+=("$!")
NAMES+=("chatgg $FRONT") CPIDS+=("$!")
[[ $FRONT == all ]] && METRICS+=("http://127.0.0.1:$HTTP_PORT/metrics")
for ((i = NEXT_WORKER; i <= WORKERS; i++)); do
	port=
	free_port port
	"${ON_OTHER[@]}" "$OUT/chatgg" worker --http-addr "127.0.0.1:$port" --data-dir "$TMP/data-w$i" "${COMMON[@]}" \
		>"$OUT/chatgg-worker$i.log" 2>&1 &
	PIDS+=("$!")
	NAMES+=("chatgg worker $i") CPIDS+=("$!")
	METRICS+=("http://127.0.0.1:$port/metrics")
	wait_http "http://127.0.0.1:$port/readyz" 30 "$!"
done
wait_http "http://127.0.0.1:$HTTP_PORT/readyz" 30 "${CPIDS[0]}"
NAMES+=("redis-server" "pouchdb-server") CPIDS+=("$REDIS_PID" "$POUCH_PID")
log "chatgg $FRONT on ws 127.0.0.1:$WS_PORT, http 127.0.0.1:$HTTP_PORT; $WORKERS worker(s)"

# 3. Publish-to-stored at a rate above the store's.
RATE=$(awk -v r="$STORE_RATE" -v f="$SATURATE" -v m="$MAX_RATE" 'BEGIN { x = int(r * f + 0.5); print (x > m ? m : (x < 1 ? 1 : x)) }')
DURATION=$(awk -v n="$STORED" -v r="$RATE" 'BEGIN { printf "%.3fs", n / r }')
PUBS=$(((RATE + PER_PUBLISHER - 1) / PER_PUBLISHER))
METRICS_ARG=$(IFS=,; echo "${METRICS[*]}")
E2E=(e2e --url "ws://127.0.0.1:$WS_PORT" --http-url "http://127.0.0.1:$HTTP_PORT" --size "$SIZE" --poll "$POLL"
	--store-timeout 90s --pid "$POUCH_PID" --worker-metrics "$METRICS_ARG" --json --progress off)
log "e2e: $STORED messages at $RATE/s ($DURATION, $PUBS publishers)"
declare -a T0
for i in "${!CPIDS[@]}"; do T0[i]=$(cpu_ticks "${CPIDS[i]}"); done
W0=$(date +%s%N)
rc=0
VERIFY_ARGS=()
[[ $VERIFY == end ]] && VERIFY_ARGS=(--verify-at-end)
timeout "$(left 120)" "${ON_OTHER[@]}" "$OUT/bench" "${E2E[@]}" "${VERIFY_ARGS[@]}" --rate "$RATE" --duration "$DURATION" --publishers "$PUBS" \
	>"$OUT/e2e.json" 2>>"$OUT/bench.log" || rc=$?
W1=$(date +%s%N)
declare -a T1
for i in "${!CPIDS[@]}"; do T1[i]=$(cpu_ticks "${CPIDS[i]}"); done
((rc == 0)) || log "bench e2e: exit $rc (kept: $OUT/e2e.json, $OUT/bench.log)"

# 4. Latency below the rate chatgg reached.
if [[ $rc == 0 && $LATENCY_LOAD != 0 ]]; then
	E2E_RATE=$(jq -r '.stored.stored_per_sec' "$OUT/e2e.json")
	LRATE=$(awk -v r="$E2E_RATE" -v f="$LATENCY_LOAD" 'BEGIN { x = int(r * f + 0.5); print (x < 1 ? 1 : x) }')
	LPUBS=$(((LRATE + PER_PUBLISHER - 1) / PER_PUBLISHER))
	log "e2e latency: $LRATE/s for $LATENCY_DURATION ($LPUBS publishers)"
	timeout "$(left 60)" "${ON_OTHER[@]}" "$OUT/bench" "${E2E[@]}" --rate "$LRATE" --duration "$LATENCY_DURATION" --publishers "$LPUBS" \
		>"$OUT/e2e-latency.json" 2>>"$OUT/bench.log" || log "bench e2e (latency): exit $? (kept: $OUT/e2e-latency.json)"
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# 5. The table.
{
	echo "store-compare $(date -u +%FT%TZ)"
	echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
	pinned="nothing pinned"
	[[ $PIN == 1 ]] && pinned="pouchdb-server on CPU $STORE_CPU, chatgg, redis-server and the tool on CPU $OTHER_CPU"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') × $(nproc); GOMAXPROCS ${GOMAXPROCS:-default}; $pinned"
	echo "$($GO version | cut -d' ' -f3), node $(node --version), pouchdb-server $(node -p "require('./tools/node/node_modules/pouchdb-server/package.json').version") --in-memory, $(redis-server --version | cut -d' ' -f3)"
	echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER (other work on this machine skews numbers)"
	echo "chatgg: $FRONT + $((WORKERS - NEXT_WORKER + 1)) worker process(es), --batch-size $BATCH; a fresh pouchdb-server for each side"
	echo
	"$OUT/bench" compare --store --dir "$OUT"
	echo
	echo "CPU during the e2e run ($(awk -v a="$W0" -v b="$W1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }') s), % of one core:"
	for i in "${!CPIDS[@]}"; do
		awk -v n="${NAMES[i]}" -v p="${CPIDS[i]}" -v a="${T0[i]}" -v b="${T1[i]}" -v w0="$W0" -v w1="$W1" -v hz="$(getconf CLK_TCK)" \
			'BEGIN { printf "  %-18s pid %-7d %5.1f\n", n, p, 100 * (b - a) / hz / ((w1 - w0) / 1e9) }'
	done
} | tee "$OUT/table.txt"
log "results in $OUT"
