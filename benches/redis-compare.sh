#!/usr/bin/env bash
# The Redis store before and after a change, in one run: two server binaries, BEFORE and AFTER,
# measured alternately (A B A B …) on benches/redis.sh's relay shapes (two instances on one
# fresh redis-server, sends on A, receivers on B), so that the machine's drift falls on both
# alike. Each run also reports Redis's own time per delivered message: its CPU (user + system,
# from /proc) and the time INFO commandstats gives its scripts (EVALSHA and FCALL), which other load on
# the machine disturbs far less than throughput. Written for the seal (issue 18), whose cost
# is Redis's.
#
#   bash benches/redis-compare.sh BEFORE_BINARY [ROUNDS] [OUT]
#
# The BEFORE binary reads the Rocket.toml of its own tree (BEFORE_CONFIG, by default the one two
# levels above target/release/), since a newer Rocket.toml may have keys it does not know.
# AFTER is this tree's release build (AFTER_BINARY to measure another one). REDIS_PORT, PORT_A
# and PORT_B move it off 6390, 8000 and 8001.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1
ROUNDS=${2:-3}
OUT=${3:-target/bench-redis-compare}
mkdir -p "$OUT"
if [ -z "${AFTER_BINARY:-}" ]; then
  cargo build --release --bin signpost --bin signpost-bench
fi
AFTER=${AFTER_BINARY:-target/release/signpost}
BENCH=${BENCH_BINARY:-target/release/signpost-bench}
BEFORE_CONFIG=${BEFORE_CONFIG:-$(cd "$(dirname "$BEFORE")/../.." && pwd)/Rocket.toml}
REDIS_PORT=${REDIS_PORT:-6390}
PORT_A=${PORT_A:-8000}
PORT_B=${PORT_B:-8001}
A=http://127.0.0.1:$PORT_A
B=http://127.0.0.1:$PORT_B
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

measure() {
  local label=$1 binary=$2 name=$3; shift 3
  local config=Rocket.toml
  [ "$label" = before ] && config=$BEFORE_CONFIG
  PIDS=()
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --maxmemory-policy noeviction > "$OUT/redis.log" 2>&1 &
  local redis=$!
  PIDS+=("$redis")
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for port in "$PORT_A" "$PORT_B"; do
    ROCKET_CONFIG=$config ROCKET_PROFILE=bench ROCKET_PORT=$port \
      ROCKET_SIGNPOST="{redis_url=\"redis://127.0.0.1:$REDIS_PORT\",instance=\"bench-$port\"}" \
      "$binary" > "$OUT/server-$port.log" 2>&1 &
    PIDS+=($!)
  done
  for port in "$PORT_A" "$PORT_B"; do
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  done
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
  local ticks_before ticks_after script_us
  ticks_before=$(awk '{print $14 + $15}' "/proc/$redis/stat")
  # A run that lost or failed still reports (its lost and errors say so).
  "$BENCH" relay --url "$A" --receive-url "$B" "$@" --json > "$OUT/$name-$label.json" 2>/dev/null || true
  ticks_after=$(awk '{print $14 + $15}' "/proc/$redis/stat")
  script_us=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_(evalsha|fcall):/ {s += $5} END {print s + 0}')
  cleanup
  PIDS=()
  jq -r --arg l "$label" --arg n "$name" --argjson ticks "$((ticks_after - ticks_before))" \
    --argjson hz "$(getconf CLK_TCK)" --argjson script "${script_us:-0}" \
    '"\($n) \($l) delivered/s \(.results.delivered_per_s) p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) lost \(.lost) dup \(.duplicated) errors \(.errors) redis-cpu-us/msg \((($ticks / $hz) * 1e6 / .results.delivered_total * 100 | round) / 100) redis-script-us/msg \(($script / .results.delivered_total * 100 | round) / 100)"' \
    "$OUT/$name-$label.json"
}

for round in $(seq 1 "$ROUNDS"); do
  for label in before after; do
    binary=$AFTER
    [ "$label" = before ] && binary=$BEFORE
    measure "$label" "$binary" stream --duration 5 --warmup 1
    measure "$label" "$binary" batch16 --duration 5 --warmup 1 --batch 16
    measure "$label" "$binary" poll --duration 5 --warmup 1 --transport poll
  done
done
