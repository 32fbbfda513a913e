#!/usr/bin/env bash
# Heap allocations per relayed message in a signpost server, counted exactly (not sampled):
# uprobes on mimalloc's entry points (every Rust allocation goes through mi_malloc_aligned,
# mi_zalloc_aligned or mi_realloc_aligned), counted with `perf stat` over two runs of the relay
# that differ only in how many messages they send, so that start-up, joins and streams cancel:
# (count at 80,000 messages - count at 20,000) / 60,000. Needs perf and root (perf probe).
#
#   bash benches/allocs.sh [BINARY] [relay options…]    # e.g. … target/release/signpost --transport poll
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin signpost --bin signpost-bench
BINARY=${1:-target/release/signpost}
shift || true
GROUP=signpost_allocs
perf probe -q -d "$GROUP:*" 2>/dev/null || true
for entry in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
  perf probe -q -x "$BINARY" --add "$GROUP:${entry}_n=$entry"
done
trap 'perf probe -q -d "$GROUP:*" 2>/dev/null || true' EXIT
count() {
  ROCKET_PROFILE=bench perf stat -x, -e "$GROUP:*" -o "target/allocs-$1.stat" "$BINARY" \
    > target/allocs-server.log 2>&1 &
  local perf=$!
  for _ in $(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:8000/healthz && break; sleep 0.1; done
  target/release/signpost-bench relay --warmup 0 --duration 60 --max-messages "$1" "${@:2}" \
    --json > "target/allocs-$1.json" 2>/dev/null
  kill "$(pgrep -P "$perf")"; wait "$perf" || true
  awk -F, '/'"$GROUP"'/ {sum += $1} END {print sum}' "target/allocs-$1.stat"
}
few=$(count 20000 "$@")
many=$(count 80000 "$@")
echo "allocations per message: $(echo "scale=2; ($many - $few) / 60000" | bc -l)"
