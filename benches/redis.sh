#!/usr/bin/env bash
# The Redis store's figures (docs/BENCHMARKS.md, "Two instances on Redis"): a redis-server
# without persistence and two signpost instances on it, A on 127.0.0.1:8000 taking the sends and
# B on 127.0.0.1:8001 holding the receivers' streams and polls, so that every message crosses
# instances through Redis. Redis, both instances and the generator share this machine's cores.
# Needs redis-server and redis-cli (apt-get install -y redis-server) and jq.
#
#   bash benches/redis.sh [OUT]        # OUT defaults to target/bench-redis
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-redis}
mkdir -p "$OUT"
cargo build --release --bin signpost --bin signpost-bench
SERVER=target/release/signpost
BENCH=target/release/signpost-bench
REDIS_PORT=${REDIS_PORT:-6390}
A=http://127.0.0.1:8000
B=http://127.0.0.1:8001
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxmemory-policy noeviction > "$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
used_memory() { redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" {print $2}'; }

start() {
  for port in 8000 8001; do
    ROCKET_PROFILE=bench ROCKET_PORT=$port \
      ROCKET_SIGNPOST="{redis_url=\"redis://127.0.0.1:$REDIS_PORT\",instance=\"bench-$port\"}" \
      "$SERVER" > "$OUT/server-$port.log" 2>&1 &
    PIDS+=($!)
  done
  for port in 8000 8001; do
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  done
}
stop() {
  for pid in "${PIDS[@]:1}"; do kill "$pid" 2>/dev/null || true; done
  PIDS=("${PIDS[0]}")
  sleep 1
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
}
# Redis's own time over the run (warm-up included): calls and µs of its scripts and publishes,
# from INFO commandstats, reset before each run.
redis_time() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_(evalsha|eval|publish):/ {printf "%s calls=%s usec=%s usec_per_call=%s; ", substr($1, 9), $3, $5, $7}'
}
run() {
  local name=$1; shift
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
  "$BENCH" "$@" --json > "$OUT/$name.json"
  echo "$name: $(jq -c '[.results, .latency_ms, .lost, .duplicated, .errors]' "$OUT/$name.json")"
  echo "$name redis: $(redis_time)"
}

start
run redis-target relay --url "$A" --receive-url "$B" --duration 5 --warmup 1
run redis-batch16 relay --url "$A" --receive-url "$B" --duration 5 --warmup 1 --batch 16
run redis-poll relay --url "$A" --receive-url "$B" --duration 5 --warmup 1 --transport poll
stop

# Redis memory per idle peer: peers in rooms of 16, each with an open stream on B, sampled while
# they are held open, over the empty store's figure.
start
before=$(used_memory)
"$BENCH" idle --url "$B" --streams 5000 --peers 16 --hold 8 --json > "$OUT/redis-idle.json" &
IDLE=$!
peak=$before
while kill -0 "$IDLE" 2>/dev/null; do
  now=$(used_memory); [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.5
done
wait "$IDLE"
echo "redis-idle: $(jq -c '[.results]' "$OUT/redis-idle.json"); Redis used_memory $before -> $peak bytes: $(( (peak - before) / 5000 )) bytes per idle peer"
stop
