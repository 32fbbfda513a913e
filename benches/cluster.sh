#!/usr/bin/env bash
# Redis Cluster's figures (docs/BENCHMARKS.md, "Two instances on Redis Cluster"): one Redis (the
# baseline, redis_url) and a cluster of 3 masters and 3 replicas (no persistence,
# cluster-node-timeout 1000), two signpost instances on each (A takes the sends, B holds the
# receivers), the same relay run on both, twice. In a cluster every send also charges the
# deployment's held bytes on their one slot (README, "Redis Cluster"), so this measures what that
# costs. Everything shares this machine's cores. Needs redis-server, redis-cli and jq.
#
#   bash benches/cluster.sh [OUT]      # OUT defaults to target/bench-cluster
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-cluster}
mkdir -p "$OUT"
cargo build --release --bin signpost --bin signpost-bench
SERVER=target/release/signpost
BENCH=target/release/signpost-bench
SINGLE=${SINGLE_PORT:-6395}
NODES=(7101 7102 7103 7104 7105 7106)
A=http://127.0.0.1:8000
B=http://127.0.0.1:8001
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

data() { mkdir -p "$OUT/node-$1"; redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$OUT/node-$1" --maxmemory-policy noeviction "${@:2}" > "$OUT/redis-$1.log" 2>&1 & PIDS+=($!); }
data "$SINGLE"
for port in "${NODES[@]}"; do
  rm -f "$OUT/node-$port/nodes.conf"
  data "$port" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000
done
for port in "$SINGLE" "${NODES[@]}"; do
  for _ in $(seq 1 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${NODES[@]}") --cluster-replicas 1 --cluster-yes > "$OUT/create.log"
for _ in $(seq 1 100); do
  redis-cli -p "${NODES[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.2
done
CLUSTER_URLS=$(printf '"redis://127.0.0.1:%s",' "${NODES[@]}")
CLUSTER_URLS="[${CLUSTER_URLS%,}]"

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
  redis-cli -p "$SINGLE" flushall >/dev/null
  for port in "${NODES[@]}"; do redis-cli -p "$port" flushall >/dev/null 2>&1 || true; done
  sleep 1
}
run() {
  local name=$1; shift
  "$BENCH" "$@" --json > "$OUT/$name.json"
  echo "$name: $(jq -c '[.results, .latency_ms, .lost, .duplicated, .errors]' "$OUT/$name.json")"
}
# Seconds of CPU a redis-server has used (INFO cpu: user + system, main thread and the rest).
cpu() { redis-cli -p "$1" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
# `run` with each data node's Redis CPU per delivered message (over the whole run, joins and
# warm-up included), for sizing (docs/BENCHMARKS.md, "Sizing"): $PREFIX's deployment-wide slot
# is marked, as its master takes a share of every send.
measured() {
  local name=$1; shift
  local ports=("$SINGLE" "${NODES[@]}") before=() global=""
  for port in "${ports[@]}"; do before+=("$(cpu "$port")"); done
  run "$name" "$@"
  local delivered; delivered=$(jq '.results.delivered_total' "$OUT/$name.json")
  if [[ "$name" == cluster* ]]; then
    local slot; slot=$(redis-cli -p "${NODES[0]}" cluster keyslot "{$PREFIX:global}")
    global=$(redis-cli -p "${NODES[0]}" cluster nodes | awk -v slot="$slot" '$3 ~ /master/ {
      for (i = 9; i <= NF; i++) { n = split($i, r, "-"); hi = (n == 2 ? r[2] : r[1])
        if (slot + 0 >= r[1] + 0 && slot + 0 <= hi + 0) { split($2, a, "[:@]"); print a[2] } } }' | head -1)
  fi
  local line="$name: Redis CPU per delivered message ($delivered):"
  for i in "${!ports[@]}"; do
    local used; used=$(awk -v a="${before[$i]}" -v b="$(cpu "${ports[$i]}")" 'BEGIN {printf "%.6f", b - a}')
    awk -v u="$used" 'BEGIN {exit !(u > 0.05)}' || continue
    local tag=""; [[ "${ports[$i]}" == "$global" ]] && tag=" (global slot)"
    line+=" ${ports[$i]}$tag $(awk -v u="$used" -v n="$delivered" 'BEGIN {printf "%.1f", u * 1e6 / n}') µs;"
  done
  echo "$line" | tee -a "$OUT/redis-cpu.txt"
}

for round in 1 2; do
  PREFIX="bench-$round"
  start "redis_url=\"redis://127.0.0.1:$SINGLE\",redis_prefix=\"$PREFIX\""
  measured "single-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1
  measured "single-broadcast-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1 --peers 4 --broadcast
  stop
  start "redis_cluster_nodes=$CLUSTER_URLS,redis_prefix=\"$PREFIX\""
  measured "cluster-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1
  measured "cluster-broadcast-$round" relay --url "$A" --receive-url "$B" --duration 5 --warmup 1 --peers 4 --broadcast
  stop
done
