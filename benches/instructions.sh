#!/usr/bin/env bash
# The in-memory store's user-space instructions per relayed message, before and after a change:
# each server binary runs under valgrind's callgrind while the generator (this tree's, natively)
# offers a fixed rate, and the instructions the server executed between its first and last
# message are divided by the messages delivered. Instructions are counted, not timed, so the
# figure barely moves with other load on the machine (about ±2 % between runs of one binary,
# from the scheduler's idle work), where benches/compare.sh's throughput swings by ±30 % per
# round on a busy one. It leaves out the kernel's share of the CPU (about half of it: sockets),
# so compare the two scripts' system calls too (`strace -c -f`) when a change touches I/O.
#
#   bash benches/instructions.sh BEFORE_BINARY [AFTER_BINARY] [OUT]
#
# BEFORE_CONFIG as in benches/compare.sh; PORT (default 8100) is where the servers listen.
# Needs valgrind (`apt-get install -y valgrind`). docs/BENCHMARKS.md, "Instructions per message".
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1
if [ -z "${2:-}" ]; then
  cargo build --release --bin signpost --bin signpost-bench
fi
AFTER=${2:-target/release/signpost}
OUT=${3:-target/bench-instructions}
BENCH=${BENCH_BINARY:-target/release/signpost-bench}
BEFORE_CONFIG=${BEFORE_CONFIG:-$(cd "$(dirname "$BEFORE")/../.." && pwd)/Rocket.toml}
PORT=${PORT:-8100}
mkdir -p "$OUT"

# Prints the instructions per delivered message of one binary on one shape.
measure() {
  local label=$1 binary=$2 name=$3; shift 3
  local config=Rocket.toml
  [ "$label" = before ] && config=$BEFORE_CONFIG
  rm -f "$OUT/$name-$label".cg.*
  ROCKET_CONFIG=$config ROCKET_PROFILE=bench ROCKET_PORT=$PORT valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/$name-$label.cg.%p" "$binary" > "$OUT/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
  # Counted from here: start-up and the listener's set-up are not the relay's.
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$BENCH" relay --url "http://127.0.0.1:$PORT" --rooms 20 --senders 8 --rate 300 --warmup 0 \
    --duration 10 --json "$@" > "$OUT/$name-$label.json" 2>/dev/null
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local dump instructions delivered
  dump=$(ls "$OUT/$name-$label".cg.* | grep -E '\.[0-9]+$' | sort | tail -1)
  instructions=$(grep -m1 '^summary:' "$dump" | awk '{print $2}')
  delivered=$(jq .results.delivered_total "$OUT/$name-$label.json")
  echo $((instructions / delivered))
}

printf '%-10s %14s %14s %7s\n' shape before after ratio
for shape in "relay" "batch16 --batch 16" "poll --transport poll"; do
  set -- $shape
  name=$1; shift
  before=$(measure before "$BEFORE" "$name" "$@")
  after=$(measure after "$AFTER" "$name" "$@")
  printf '%-10s %14s %14s %7s\n' "$name" "$before" "$after" \
    "$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.3f", a / b }')"
done
