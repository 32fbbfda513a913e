#!/usr/bin/env bash
# The series behind the tables of docs/BENCHMARKS.md: builds the release binaries, starts the
# server with the `bench` profile of Rocket.toml on 127.0.0.1:8000, runs every measurement
# (one JSON report each, in $OUT) and stops the server. Needs wrk (apt-get install -y wrk) and jq.
#
#   bash benches/series.sh [OUT]        # OUT defaults to target/bench-series
#
# Before each run it waits (at most ~20 s) until the machine is quiet (under 25 % busy, measured
# over one second while the server idles) and prints how busy it was next to the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-series}
mkdir -p "$OUT"
cargo build --release --bin signpost --bin signpost-bench
SERVER=target/release/signpost
BENCH=target/release/signpost-bench

busy() {
  local a b t=0 i idle
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  for i in 1 2 3 4 5 6 7 8; do t=$((t + b[i] - a[i])); done
  idle=$(( (b[4] - a[4]) + (b[5] - a[5]) ))
  echo $(( 100 * (t - idle) / t ))
}
quiet() { local k; for k in $(seq 1 20); do BUSY=$(busy); [ "$BUSY" -lt 25 ] && return; done; }
start() {
  ROCKET_PROFILE=bench "$SERVER" > "$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  sleep 1
  kill -0 "$SERVER_PID" || { echo "the server did not start (is port 8000 taken?)"; exit 1; }
}
stop() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }
run() {
  local name=$1; shift
  quiet
  "$BENCH" "$@" --json > "$OUT/$name.json"
  echo "$name (machine ${BUSY}% busy before): $(jq -c '[.results, .latency_ms, .lost, .duplicated, .errors]' "$OUT/$name.json")"
}

start
run target-1 relay --duration 5 --warmup 1
run target-2 relay --duration 5 --warmup 1
run batch16 relay --duration 5 --warmup 1 --batch 16
run poll relay --duration 5 --warmup 1 --transport poll
run poll-batch16 relay --duration 5 --warmup 1 --transport poll --batch 16
run broadcast4 relay --duration 5 --warmup 1 --peers 4 --broadcast
run open10k relay --duration 5 --warmup 1 --rate 10000
run inflight4 relay --duration 5 --warmup 1 --in-flight 4
for rooms in 50 200 800; do run "rooms-$rooms" relay --duration 5 --warmup 1 --rooms "$rooms"; done
for peers in 2 4 8; do run "peers-$peers" relay --duration 5 --warmup 1 --peers "$peers"; done
for size in 100 1000 10000; do run "size-$size" relay --duration 5 --warmup 1 --size "$size"; done
stop

start
for n in 1 2; do
  quiet
  TOKEN=$(curl -s -X POST "http://127.0.0.1:8000/api/rooms/wrk$n/peers" | jq -r .token)
  TOKEN=$TOKEN wrk -t1 -c64 -d10s -s benches/send.lua "http://127.0.0.1:8000/api/rooms/wrk$n/messages" > "$OUT/wrk-$n.txt"
  echo "wrk-$n (machine ${BUSY}% busy before): $(grep -E 'Requests/sec|non-202' "$OUT/wrk-$n.txt" | tr '\n' ' ')"
done
run churn churn --duration 10
stop

start
run idle-19000 idle --streams 19000 --hold 5 --server-pid "$SERVER_PID"
stop
