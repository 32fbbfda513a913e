#!/usr/bin/env bash
# signpost against the anchor, PeerJS server 1.0.2 (one WebSocket frame in and one out per
# message), in one run on the same machine (issue 20; docs/BENCHMARKS.md, "Against PeerJS").
#
#   bash benches/peerjs.sh [ROUNDS] [OUT]          # ROUNDS defaults to 3, OUT to target/bench-peerjs
#   SIGNPOST=path/to/signpost bash benches/peerjs.sh   # another signpost build (its own Rocket.toml
#                                                      # by default: SIGNPOST_CONFIG)
#   IDLE=0 bash benches/peerjs.sh                   # the relay rounds only
#   TRANSPORT=poll bash benches/peerjs.sh           # signpost's receivers long-poll instead of SSE
#   BEFORE=path/to/older/signpost bash benches/peerjs.sh   # that build too, in the same rounds
#                                                      # (its Rocket.toml: BEFORE_CONFIG)
#   FLOOR=1 bash benches/peerjs.sh                  # instead of BEFORE: the floor of any relay on
#                                                      # hyper (examples/relay_floor.rs), in the same
#                                                      # relay rounds
#
# Installs the PeerJS harness of ../shared/bench (peer 1.0.2, ws 8.23.0) into target/peerjs-bench
# once, then, ROUNDS times, alternating so that the machine's drift falls on both alike: PeerJS
# then signpost (release build, the `bench` profile of Rocket.toml), each a fresh server, in the
# same shape: 200 rooms (pairs) of 2 peers, 64 senders with one message in flight each, 100 bytes
# of data, receivers on SSE for signpost. Server CPU per message = the server's user+system time
# from /proc/<pid>/stat over a window inside the measured run, divided by the messages delivered
# in it (PeerJS: the harness's own reading over its send window; signpost: 3 s read here in the
# middle of a 6 s measured run). Then the memory per idle connection, 10,000 of them, each on a
# fresh server: PeerJS `idle --conns 10000`, signpost `idle --streams 10000`.
# Each generator is one process on the same cores as the server. Needs node, npm, jq, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=${2:-target/bench-peerjs}
IDLE=${IDLE:-1}
TRANSPORT=${TRANSPORT:-sse}
HARNESS=target/peerjs-bench
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"

if [ ! -d "$HARNESS/node_modules/peer" ]; then
  mkdir -p "$HARNESS"
  cp -r ../shared/bench/. "$HARNESS/"
  (cd "$HARNESS" && npm install --no-audit --no-fund)
fi
cargo build --release --bin signpost --bin signpost-bench
SIGNPOST=${SIGNPOST:-target/release/signpost}
SIGNPOST_CONFIG=${SIGNPOST_CONFIG:-$(cd "$(dirname "$SIGNPOST")/../.." && pwd)/Rocket.toml}
BEFORE=${BEFORE:-}
LABEL=before
if [ "${FLOOR:-0}" = 1 ]; then
  cargo build --release --example relay_floor
  BEFORE=target/release/examples/relay_floor LABEL=floor
fi
if [ -n "$BEFORE" ]; then
  BEFORE_CONFIG=${BEFORE_CONFIG:-$(cd "$(dirname "$BEFORE")/../.." && pwd)/Rocket.toml}
fi
BENCH=target/release/signpost-bench
PEERJS="$HARNESS/node_modules/peer/dist/bin/peerjs.js"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; }
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
start_peerjs() {
  node "$PEERJS" --port 9000 --host 127.0.0.1 --concurrent_limit 20000 > "$OUT/peerjs.log" 2>&1 &
  PID=$!
  wait_port 9000
}
# start_signpost [before]: this build, or BEFORE with its own config.
start_signpost() {
  local binary=$SIGNPOST config=$SIGNPOST_CONFIG
  [ "${1:-}" = before ] && binary=$BEFORE config=$BEFORE_CONFIG
  ROCKET_CONFIG=$config ROCKET_PROFILE=bench "$binary" > "$OUT/signpost.log" 2>&1 &
  PID=$!
  wait_port 8000
}
# msgs/s p99_ms cpu_us_per_msg, one line per run, in $OUT/{peerjs,signpost}.rows
relay_peerjs() {
  start_peerjs
  node "$HARNESS/peerjs-bench.js" relay --port 9000 --pairs 200 --senders 64 --inflight 1 \
    --sdp-bytes 100 --duration 6 --server-pid "$PID" > "$OUT/peerjs-relay-$1.txt"
  stop "$PID"
  sed -n 's/^RESULT //p' "$OUT/peerjs-relay-$1.txt" | jq -r '
    if .lost != 0 or .dup != 0 then error("PeerJS lost or duplicated messages") else . end
    | "\(.delivered_per_s | round) \(.lat_ms.p99) \(.server_cores * 1e6 / .delivered_per_s * 100 | round / 100)"' \
    | tee -a "$OUT/peerjs.rows"
}
# relay_signpost ROUND [before]
relay_signpost() {
  local name=signpost${2:+-$2}
  start_signpost "${2:-}"
  "$BENCH" relay --rooms 200 --peers 2 --senders 64 --in-flight 1 --size 100 --warmup 1 \
    --duration 6 --transport "$TRANSPORT" --json > "$OUT/$name-relay-$1.json" 2>/dev/null &
  local bench=$! t0 t1
  sleep 2.5; t0=$(ticks "$PID"); sleep 3; t1=$(ticks "$PID")
  wait "$bench"
  stop "$PID"
  jq -r --argjson cores "$(echo "($t1 - $t0) / $HZ / 3" | bc -l)" '
    if .lost != 0 or .duplicated != 0 then error("signpost lost or duplicated messages") else . end
    | "\(.results.delivered_per_s | round) \(.latency_ms.p99) \($cores * 1e6 / .results.delivered_per_s * 100 | round / 100)"' \
    "$OUT/$name-relay-$1.json" | tee -a "$OUT/$name.rows"
}

rm -f "$OUT/peerjs.rows" "$OUT/signpost.rows" "$OUT/signpost-before.rows"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round: PeerJS, ${BEFORE:+signpost $LABEL, }signpost (msgs/s, p99 ms, server CPU µs/msg)"
  relay_peerjs "$round"
  [ -n "$BEFORE" ] && relay_signpost "$round" before
  relay_signpost "$round"
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v c="$2" '{print $c}' "$OUT/$1.rows" | median; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
echo
echo "relay, 200 rooms × 2 peers, 64 senders × 1 in flight, signpost on $TRANSPORT, medians of $ROUNDS rounds:"
printf '%-22s %12s %12s %16s' "" PeerJS signpost "signpost/PeerJS"
[ -n "$BEFORE" ] && printf ' %12s %16s' "$LABEL" "$LABEL/PeerJS"
echo
for pair in "msgs/s 1" "p99 ms 2" "CPU µs/msg 3"; do
  set -- $pair
  name="$1"; [ $# -eq 3 ] && { name="$1 $2"; shift; }
  p=$(col peerjs "$2"); s=$(col signpost "$2")
  printf '%-22s %12s %12s %15sx' "$name" "$p" "$s" "$(ratio "$s" "$p")"
  [ -n "$BEFORE" ] && b=$(col signpost-before "$2") && printf ' %12s %15sx' "$b" "$(ratio "$b" "$p")"
  echo
done

if [ "$IDLE" = 1 ]; then
  start_peerjs
  node "$HARNESS/peerjs-bench.js" idle --port 9000 --conns 10000 --settle 5 --server-pid "$PID" \
    > "$OUT/peerjs-idle.txt"
  stop "$PID"
  p=$(sed -n 's/^RESULT //p' "$OUT/peerjs-idle.txt" | jq '.kib_per_conn')
  start_signpost
  "$BENCH" idle --streams 10000 --hold 5 --server-pid "$PID" --json > "$OUT/signpost-idle.json" 2>/dev/null
  stop "$PID"
  s=$(jq '.results.bytes_per_stream / 1024 * 100 | round / 100' "$OUT/signpost-idle.json")
  printf '%-22s %12s %12s %15sx' "KiB per idle conn" "$p" "$s" "$(ratio "$s" "$p")"
  # (The floor has no rooms, so no join events for the idle streams to check.)
  if [ -n "$BEFORE" ] && [ "$LABEL" != floor ]; then
    start_signpost before
    "$BENCH" idle --streams 10000 --hold 5 --server-pid "$PID" --json > "$OUT/signpost-before-idle.json" 2>/dev/null
    stop "$PID"
    b=$(jq '.results.bytes_per_stream / 1024 * 100 | round / 100' "$OUT/signpost-before-idle.json")
    printf ' %12s %15sx' "$b" "$(ratio "$b" "$p")"
  fi
  echo
fi
