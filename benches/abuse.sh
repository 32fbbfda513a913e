#!/usr/bin/env bash
# One client address against the defaults: `signpost-bench abuse`'s four attack shapes (memory,
# connections, rooms, listing), each from 1 and from 10 client addresses, against each of two
# server binaries on their default profile (not `bench`), each run on a fresh server on a free
# port. Prints a table per binary; the JSON reports stay in OUT. docs/BENCHMARKS.md, "Abuse: one
# client address against the defaults", has the figures.
#
#   bash benches/abuse.sh BEFORE_BINARY [AFTER_BINARY] [OUT]
#
# AFTER_BINARY defaults to this tree's target/release/signpost; pass "-" to measure BEFORE alone.
# Both binaries read the same minimal configuration written into OUT (the address, the port, the
# static files and the log), so that every other setting is the binary's own default; the
# listing shape adds join_auth = "required" and a join key. SHAPES and ADDRESSES (space-separated)
# and DURATION (seconds a shape is held) narrow a run; RSS_CAP_MIB (6144) stops a shape whose
# server grows past it; REDIS_URL (e.g. redis://127.0.0.1:6379) runs the servers on the Redis
# store instead of in memory, each run under a prefix of its own (Redis's own memory is not
# counted). The generator is this tree's, and talks only to 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$(realpath "$1")
AFTER=${2:-target/release/signpost}
OUT=${3:-target/bench-abuse}
SHAPES=${SHAPES:-memory connections rooms listing}
ADDRESSES=${ADDRESSES:-1 10}
DURATION=${DURATION:-40}
RSS_CAP_MIB=${RSS_CAP_MIB:-6144}
mkdir -p "$OUT"
cargo build --release --bin signpost-bench
[ "$AFTER" = - ] || cargo build --release --bin signpost
BENCH=target/release/signpost-bench
STATIC=$(pwd)/static
# A join key for the listing shape: 32 bytes or more, made for this run only.
KEY=$(head -c 24 /dev/urandom | base64)

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# measure LABEL BINARY SHAPE ADDRESSES: one run on a fresh server; the JSON report in OUT.
measure() {
  local label=$1 binary=$2 shape=$3 addresses=$4
  local port name="$OUT/$label-$shape-$addresses"
  port=$(free_port)
  cat > "$OUT/Rocket.toml" <<EOF
[default]
address = "127.0.0.1"
port = $port
[default.signpost]
static_dir = "$STATIC"
EOF
  local settings=() token_args=()
  if [ "$shape" = listing ]; then
    settings+=("join_auth=\"required\"" "join_keys={abuse=\"$KEY\"}")
  fi
  if [ -n "${REDIS_URL:-}" ]; then
    settings+=("redis_url=\"$REDIS_URL\"" "redis_prefix=\"abuse-$label-$shape-$addresses-$$\"")
  fi
  local signpost
  signpost="{$(IFS=,; echo "${settings[*]}")}"
  ROCKET_CONFIG="$OUT/Rocket.toml" ROCKET_PROFILE=default ROCKET_SIGNPOST="$signpost" \
    "$binary" > "$name.server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  if [ "$shape" = listing ]; then
    token_args=(--join-token "$(ROCKET_CONFIG="$OUT/Rocket.toml" ROCKET_PROFILE=default \
      ROCKET_SIGNPOST="$signpost" "$binary" token --room abuse-listing --ttl 10m)")
  fi
  "$BENCH" abuse --url "http://127.0.0.1:$port" --server-pid "$pid" --shape "$shape" \
    --addresses "$addresses" --duration "$DURATION" --rss-cap-mib "$RSS_CAP_MIB" \
    "${token_args[@]}" --json > "$name.json" 2> "$name.bench.log" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

table() {
  local label=$1
  echo "== $label: $(basename "$(realpath "${2}")")"
  printf '%-12s %5s %12s %12s %8s %26s %s\n' shape addr "RSS peak" "per address" "fds peak" \
    "fresh client p50/p99/max" "shape"
  for shape in $SHAPES; do
    for addresses in $ADDRESSES; do
      local file="$OUT/$label-$shape-$addresses.json"
      [ -s "$file" ] || { printf '%-12s %5s (no report: see %s)\n' "$shape" "$addresses" "${file%.json}.bench.log"; continue; }
      jq -r --arg shape "$shape" --arg addr "$addresses" '
        .results as $r |
        (if $r.server_rss_over_cap then $r.server_rss_peak_shown else "\($r.server_rss_peak_mib // "-") MiB" end) as $peak |
        (if $r.server_rss_over_cap then "> \(((.settings.rss_cap_mib - $r.server_rss_start_mib) / .settings.addresses) | floor) MiB"
         else "\($r.server_rss_peak_per_address_mib // "-") MiB" end) as $per |
        (if .latency_ms then "\(.latency_ms.p50)/\(.latency_ms.p99)/\(.latency_ms.max) ms, \($r.probe_failed) failed"
         elif $r.probe_failed then "all \($r.probe_failed) failed" else "-" end) as $probe |
        ({memory: "\($r.pairs) pairs, \($r.message_mib_accepted) MiB accepted, \($r.unread_answers_open) unread answers",
          connections: "\($r.connections_opened) opened; open at 10/20/30/40 s: \($r.open_after_10s // "-")/\($r.open_after_20s // "-")/\($r.open_after_30s // "-")/\($r.open_after_40s // "-")",
          rooms: "\($r.rooms_per_address_max) rooms per address (\($r.rooms_held) in all); \($r.addresses_to_exhaust_max_rooms) addresses exhaust max_rooms",
          listing: "\($r.statuses_without_credential // $r.skipped // $r.member_join | tostring); peer id disclosed: \($r.peer_id_disclosed)"}[$shape]) as $what |
        "\($shape | .[0:12] | . + " " * (12 - length)) \($addr | " " * (5 - length) + .) \($peak | " " * (12 - length) + .) \($per | " " * (12 - length) + .) \($r.server_fds_peak // "-" | tostring | " " * (8 - length) + .) \($probe | " " * (26 - length) + .) \($what)"
      ' "$file"
    done
  done
}

labels=(before)
binaries=("$BEFORE")
if [ "$AFTER" != - ]; then labels+=(after); binaries+=("$(realpath "$AFTER")"); fi
for index in "${!labels[@]}"; do
  for shape in $SHAPES; do
    for addresses in $ADDRESSES; do
      echo "${labels[$index]}: $shape from $addresses address(es) …" >&2
      measure "${labels[$index]}" "${binaries[$index]}" "$shape" "$addresses"
    done
  done
done
for index in "${!labels[@]}"; do
  table "${labels[$index]}" "${binaries[$index]}"
done
