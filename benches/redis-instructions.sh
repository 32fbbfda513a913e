#!/usr/bin/env bash
# Redis's own instructions per relayed message, before and after a change: a fresh
# redis-server under valgrind's callgrind, two signpost instances on it (sends on A, receivers
# on B, so that every message crosses instances), and the generator offering a fixed, low rate
# (100 messages/s for 10 s, 20 rooms, 8 senders) after a short warm-up that loads the scripts.
# The instructions Redis executed from the first counted message to the last, divided by the
# messages delivered. Counted, not timed: on streams two runs of one binary agree within 0.1 %,
# where benches/redis-compare.sh's script time per message moves by ±10 % between runs on a
# quiet machine. Long-poll is not as steady (±15 % between runs of one binary): how many polls,
# opens and reads a message takes depends on whether its poll is already waiting when it
# arrives, which timing decides; run it several times and compare the spreads. Redis is the
# store's bottleneck across instances, so this is its cost per message. Also prints the script
# calls (FCALL and EVALSHA, from INFO commandstats) per delivered message.
#
#   bash benches/redis-instructions.sh BEFORE_BINARY [AFTER_BINARY] [OUT]
#
# BEFORE_CONFIG as in benches/compare.sh; AFTER_CONFIG (default: this tree's Rocket.toml) for an
# AFTER binary from another tree. REDIS_PORT, PORT_A and PORT_B move it off 6396, 8320
# and 8321. Needs valgrind and redis-server. docs/BENCHMARKS.md, "Redis's instructions per
# message".
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1
if [ -z "${2:-}" ]; then
  cargo build --release --bin signpost --bin signpost-bench
fi
AFTER=${2:-target/release/signpost}
OUT=${3:-target/bench-redis-instructions}
BENCH=${BENCH_BINARY:-target/release/signpost-bench}
BEFORE_CONFIG=${BEFORE_CONFIG:-$(cd "$(dirname "$BEFORE")/../.." && pwd)/Rocket.toml}
REDIS_PORT=${REDIS_PORT:-6396}
PORT_A=${PORT_A:-8320}
PORT_B=${PORT_B:-8321}
A=http://127.0.0.1:$PORT_A
B=http://127.0.0.1:$PORT_B
mkdir -p "$OUT"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Prints Redis's instructions per delivered message for one binary on one shape.
measure() {
  local label=$1 binary=$2 name=$3; shift 3
  local config=${AFTER_CONFIG:-Rocket.toml}
  [ "$label" = before ] && config=$BEFORE_CONFIG
  rm -f "$OUT/$name-$label".cg.*
  PIDS=()
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name-$label.cg.%p" redis-server \
    --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$OUT/redis.log" 2>&1 &
  local redis=$!
  PIDS+=("$redis")
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
  for port in "$PORT_A" "$PORT_B"; do
    ROCKET_CONFIG=$config ROCKET_PROFILE=bench ROCKET_PORT=$port \
      ROCKET_SIGNPOST="{redis_url=\"redis://127.0.0.1:$REDIS_PORT\",instance=\"bench-$port\"}" \
      "$binary" > "$OUT/server-$port.log" 2>&1 &
    PIDS+=($!)
  done
  for port in "$PORT_A" "$PORT_B"; do
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
  done
  # Loads every script the relay uses, so that no SCRIPT LOAD is counted.
  "$BENCH" relay --url "$A" --receive-url "$B" --rooms 10 --senders 4 --rate 50 --duration 2 \
    --warmup 0 --json "$@" > /dev/null 2>&1 || true
  callgrind_control -z "$redis" >/dev/null 2>&1
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
  "$BENCH" relay --url "$A" --receive-url "$B" --rooms 20 --senders 8 --rate 100 --duration 10 \
    --warmup 0 --json "$@" > "$OUT/$name-$label.json" 2>/dev/null || true
  callgrind_control -d "$redis" >/dev/null 2>&1
  local calls
  calls=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_(evalsha|fcall):/ {s += $3} END {print s + 0}')
  cleanup
  PIDS=()
  local dump instructions delivered
  dump=$(ls "$OUT/$name-$label".cg.* | grep -E '\.[0-9]+$' | sort | tail -1)
  instructions=$(grep -m1 '^summary:' "$dump" | awk '{print $2}')
  delivered=$(jq .results.delivered_total "$OUT/$name-$label.json")
  echo "$((instructions / delivered)) $(awk -v c="$calls" -v d="$delivered" 'BEGIN { printf "%.2f", c / d }')"
}

printf '%-10s %14s %14s %7s %13s %12s\n' shape before after ratio "calls before" "calls after"
for shape in "stream" "poll --transport poll" "batch16 --batch 16"; do
  set -- $shape
  name=$1; shift
  read -r before before_calls < <(measure before "$BEFORE" "$name" "$@")
  read -r after after_calls < <(measure after "$AFTER" "$name" "$@")
  printf '%-10s %14s %14s %7s %13s %12s\n' "$name" "$before" "$after" \
    "$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.3f", a / b }')" "$before_calls" "$after_calls"
done
