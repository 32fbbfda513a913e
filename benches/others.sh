#!/usr/bin/env bash
# The rest of what the benchmarks measure, before and after a change, in one run (issue 20's
# "no regression" check; the relay shapes are benches/compare.sh's and, across instances on
# Redis, benches/redis-compare.sh's): idle SSE streams, joins and leaves (churn) and the
# reconnect storm, each on a fresh server, BEFORE and AFTER alternately round by round so that
# the machine's drift falls on both alike.
#
#   bash benches/others.sh BEFORE_BINARY [ROUNDS] [OUT]
#
# Per round and binary, one line each:
#   idle   bytes of server memory per idle stream (RSS, 5,000 streams in rooms of 16);
#   churn  joins + leaves per second (32 workers over 100 rooms, each room observed on SSE),
#          p99 of one join or leave, and the server's CPU (user + system, /proc) per operation;
#   storm  2,000 peers on streams, the server restarted under them: seconds until all are back
#          after it listens again, p99 of their joins, the server's RSS peak during the storm.
# The BEFORE binary reads the Rocket.toml of its own tree (BEFORE_CONFIG, by default the one two
# levels above target/release/). PORT (default 8000) is where the servers listen.
set -euo pipefail
source "$(dirname "$0")/before-after.sh" target/bench-others "$@"
HZ=$(getconf CLK_TCK)
URL="http://127.0.0.1:$PORT"

# start LABEL: a fresh server of that label's binary and config, its pid in PID.
start() {
  local binary=$AFTER config=Rocket.toml
  [ "$1" = before ] && binary=$BEFORE config=$BEFORE_CONFIG
  ROCKET_CONFIG=$config ROCKET_PROFILE=bench ROCKET_PORT=$PORT "$binary" > "$OUT/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 50); do curl -sf "$URL/healthz" >/dev/null && return; sleep 0.1; done
  echo "the $1 server did not start: $OUT/server.log" >&2
  exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

idle() {
  start "$1"
  "$BENCH" idle --url "$URL" --streams 5000 --hold 1 --server-pid "$PID" --json \
    > "$OUT/idle-$2-$1.json" 2>/dev/null
  stop
  jq -r --arg l "$1" '"idle  \($l) bytes/stream \(.results.bytes_per_stream | round) lost \(.lost)"' \
    "$OUT/idle-$2-$1.json"
}

churn() {
  start "$1"
  local before_ticks after_ticks
  before_ticks=$(ticks "$PID")
  "$BENCH" churn --url "$URL" --duration 5 --json > "$OUT/churn-$2-$1.json" 2>/dev/null
  after_ticks=$(ticks "$PID")
  stop
  jq -r --arg l "$1" --argjson ticks "$((after_ticks - before_ticks))" --argjson hz "$HZ" \
    '"churn \($l) ops/s \(.results.joins_plus_leaves_per_s) p99 \(.latency_ms.p99) ms lost \(.lost) server-cpu-us/op \((($ticks / $hz) * 1e6 / (.results.joins + .results.leaves) * 100 | round) / 100)"' \
    "$OUT/churn-$2-$1.json"
}

storm() {
  local binary=$AFTER config=Rocket.toml
  [ "$1" = before ] && binary=$BEFORE config=$BEFORE_CONFIG
  ROCKET_CONFIG=$config "$BENCH" storm --url "$URL" --server-bin "$binary" --json \
    > "$OUT/storm-$2-$1.json" 2>/dev/null
  jq -r --arg l "$1" '"storm \($l) all-back-after-listening \(.results["all back after listening"]) s join-p99 \(.results["join p99"]) ms rss-peak \(.results["server RSS peak (storm)"]) MiB back \(.results["peers back"])/\(.results.peers)"' \
    "$OUT/storm-$2-$1.json"
}

for round in $(seq 1 "$ROUNDS"); do
  for shape in idle churn storm; do
    "$shape" before "$round"
    "$shape" after "$round"
  done
done
