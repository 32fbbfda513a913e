#!/usr/bin/env bash
# What Idempotency-Key costs send.lua on Redis (docs/BENCHMARKS.md, "Idempotent sends on
# Redis"): Redis's own time per EVALSHA (INFO commandstats), for the send.lua of a commit without
# idempotency (BASE, default the commit before it was added) and the working tree's, on a room
# of one peer broadcasting to nobody (the path where a fixed cost shows most), in four cases: the
# old script, the new one without a key, with a new key per send (at the per-peer cap, so each
# send also forgets the oldest), and a replay. Rounds alternate, since a shared machine is noisy.
# Needs redis-server, redis-cli, redis-benchmark and python3.
#
#   bash benches/idempotency.sh [BASE] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-ac22225}
ROUNDS=${2:-3}
PORT=${REDIS_PORT:-6399}
WORK=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
REDIS=$!
trap 'kill $REDIS 2>/dev/null || true; rm -rf "$WORK"' EXIT
R="redis-cli -p $PORT"
for _ in $(seq 1 50); do $R ping >/dev/null 2>&1 && break; sleep 0.1; done

git show "$BASE:src/store/redis/lua/room.lua" > "$WORK/old.lua"
git show "$BASE:src/store/redis/lua/send.lua" >> "$WORK/old.lua"
cat src/store/redis/lua/room.lua src/store/redis/lua/send.lua > "$WORK/new.lua"
OLD=$($R script load "$(cat "$WORK/old.lua")")
NEW=$($R script load "$(cat "$WORK/new.lua")")

# One peer, written as join.lua writes it.
PEER=9b2c1a8e-1f55-4c3e-9d57-2b7f6e0f3a11
DIGEST=$(python3 -c "import hashlib; print(hashlib.sha256(b'token').hexdigest()[:32])")
$R hset "b:{r}:peers" $PEER "$(printf '1\n%s\n\n{}' "$DIGEST")" >/dev/null
$R hset "b:{r}:tokens" "$DIGEST" $PEER >/dev/null
$R hset "b:{r}:boxes" $PEER "0,1,0,0,,,0,0,0," >/dev/null

KEYS=(2 "b:{r}:peers" "b:{b:global}:held")
# token digest, capacity, rate, burst (no refusal), key ttl, mailbox bytes, client held, held
LIMITS=("$DIGEST" 1024 1e12 1e12 60000 1048576 67108864 402653184)
MESSAGE=(""  'bench {"type":"bench","data":{"seq":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}')
FINGERPRINT=0123456789abcdef0123456789abcdef

run() {
  $R config resetstat >/dev/null
  redis-benchmark -p "$PORT" -q -n 100000 -c 4 -r 1000000000 "$@" >/dev/null
  $R info commandstats | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_evalsha:/ {printf "%s µs per call (%s calls)\n", $7, $3}'
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  echo -n "  before, no key: "; run evalsha "$OLD" "${KEYS[@]}" "${LIMITS[@]}" "${MESSAGE[@]}"
  echo -n "  after, no key:  "; run evalsha "$NEW" "${KEYS[@]}" "${LIMITS[@]}" "" "" 300000 128 "${MESSAGE[@]}"
  echo -n "  after, new key: "; run evalsha "$NEW" "${KEYS[@]}" "${LIMITS[@]}" "k__rand_int__" $FINGERPRINT 300000 128 "${MESSAGE[@]}"
  echo -n "  after, replay:  "; run evalsha "$NEW" "${KEYS[@]}" "${LIMITS[@]}" "same" $FINGERPRINT 300000 128 "${MESSAGE[@]}"
done
uptime
