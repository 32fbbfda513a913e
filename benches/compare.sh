#!/usr/bin/env bash
# The in-memory store before and after a change, in one run: two server binaries, BEFORE and
# AFTER, measured alternately (A B A B …) on the same shapes, so that the machine's drift falls
# on both alike, and each run also reports the server's own CPU time per delivered message
# (user + system, from /proc), which other load on the machine disturbs far less than
# throughput. The generator is this tree's. docs/BENCHMARKS.md, "The store seam", has the
# figures.
#
#   bash benches/compare.sh BEFORE_BINARY [ROUNDS] [OUT]
#
# PORT (default 8000) is where the servers listen, for a machine where 8000 is taken.
#
# The BEFORE binary reads the Rocket.toml of its own tree (BEFORE_CONFIG, by default the one two
# levels above target/release/), since a newer Rocket.toml may have keys it does not know.
set -euo pipefail
source "$(dirname "$0")/before-after.sh" target/bench-compare "$@"

measure() {
  local label=$1 binary=$2 name=$3; shift 3
  local config=Rocket.toml
  [ "$label" = before ] && config=$BEFORE_CONFIG
  ROCKET_CONFIG=$config ROCKET_PROFILE=bench ROCKET_PORT=$PORT "$binary" > "$OUT/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  local ticks_before ticks_after
  ticks_before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  "$BENCH" "$@" --url "http://127.0.0.1:$PORT" --json > "$OUT/$name-$label.json" 2>/dev/null
  ticks_after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  jq -r --arg l "$label" --arg n "$name" --argjson ticks "$((ticks_after - ticks_before))" \
    --argjson hz "$(getconf CLK_TCK)" \
    '"\($n) \($l) delivered/s \(.results.delivered_per_s) p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) lost \(.lost) dup \(.duplicated) server-cpu-us/msg \((($ticks / $hz) * 1e6 / .results.delivered_total * 100 | round) / 100)"' \
    "$OUT/$name-$label.json"
}

for round in $(seq 1 "$ROUNDS"); do
  for shape in "target relay --duration 5 --warmup 1" \
               "batch16 relay --duration 5 --warmup 1 --batch 16" \
               "poll relay --duration 5 --warmup 1 --transport poll"; do
    set -- $shape
    name=$1; shift
    measure before "$BEFORE" "$name-$round" "$@"
    measure after "$AFTER" "$name-$round" "$@"
  done
done
