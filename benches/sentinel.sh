#!/usr/bin/env bash
# Redis Sentinel's figures (docs/BENCHMARKS.md, "Two instances on Redis Sentinel"): a master, a
# replica and three sentinels (no persistence), two signpost instances found the master through
# the sentinels (A takes the sends, B holds the receivers), and the relay run three ways in one go:
# redis_url straight to the master (the baseline), through Sentinel, and through Sentinel with
# redis_wait_replicas = 1 (every send waits for the replica's WAIT acknowledgement). Everything
# shares this machine's cores. Needs redis-server, redis-cli and jq.
#
#   bash benches/sentinel.sh [OUT]      # OUT defaults to target/bench-sentinel
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-sentinel}
mkdir -p "$OUT"
cargo build --release --bin signpost --bin signpost-bench
SERVER=target/release/signpost
BENCH=target/release/signpost-bench
MASTER=${MASTER_PORT:-6391}
REPLICA=$((MASTER + 1))
SENTINELS=(26391 26392 26393)
A=http://127.0.0.1:8000
B=http://127.0.0.1:8001
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

data() { redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT" \
  --maxmemory-policy noeviction "${@:2}" > "$OUT/redis-$1.log" 2>&1 & PIDS+=($!); }
data "$MASTER"
data "$REPLICA" --replicaof 127.0.0.1 "$MASTER"
for _ in $(seq 1 100); do
  redis-cli -p "$REPLICA" info replication 2>/dev/null | grep -q master_link_status:up && break; sleep 0.1
done
for port in "${SENTINELS[@]}"; do
  printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor signpost 127.0.0.1 %s 2\nsentinel down-after-milliseconds signpost 1000\nsentinel failover-timeout signpost 5000\n' \
    "$port" "$PWD/$OUT" "$MASTER" > "$OUT/sentinel-$port.conf"
  redis-server "$OUT/sentinel-$port.conf" --sentinel > "$OUT/sentinel-$port.log" 2>&1 & PIDS+=($!)
done
for _ in $(seq 1 100); do
  redis-cli -p "${SENTINELS[0]}" sentinel master signpost 2>/dev/null | grep -A1 '^num-other-sentinels$' | tail -1 | grep -q 2 && break; sleep 0.2
done
SENTINEL_URLS=$(printf '"redis://127.0.0.1:%s",' "${SENTINELS[@]}")
SENTINEL_URLS="[${SENTINEL_URLS%,}]"

INSTANCES=()
start() {
  for port in 8000 8001; do
    ROCKET_PROFILE=bench ROCKET_PORT=$port ROCKET_SIGNPOST="{$1,instance=\"bench-$port\"}" \
      "$SERVER" > "$OUT/server-$port.log" 2>&1 &
    INSTANCES+=($!)
  done
  for port in 8000 8001; do
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  done
}
stop() {
  for pid in "${INSTANCES[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  INSTANCES=()
  redis-cli -p "$MASTER" flushall >/dev/null
  sleep 1
}
run() {
  local name=$1; shift
  "$BENCH" "$@" --json > "$OUT/$name.json"
  echo "$name: $(jq -c '[.results, .latency_ms, .lost, .duplicated, .errors]' "$OUT/$name.json")"
}

for round in 1 2; do
  start "redis_url=\"redis://127.0.0.1:$MASTER\""
  run "direct-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1
  stop
  start "redis_sentinels=$SENTINEL_URLS,redis_sentinel_master=\"signpost\""
  run "sentinel-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1
  stop
  start "redis_sentinels=$SENTINEL_URLS,redis_sentinel_master=\"signpost\",redis_wait_replicas=1"
  run "sentinel-wait1-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1
  run "sentinel-wait1-batch16-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1 --batch 16
  stop
done
