#!/usr/bin/env bash
# What the room library's building blocks cost Redis, in its own instructions: a fresh
# redis-server under valgrind's callgrind, a probe library of functions that each repeat one
# operation the room scripts do (a `redis.call` of each kind they make, parsing a mailbox state,
# signing an envelope, a table), each called 1,000 times; the instructions per call, less an
# empty function's, divided by the repetitions. docs/BENCHMARKS.md, "Fewer commands per call on Redis".
#
#   bash benches/redis-lua-costs.sh
#
# REDIS_PORT moves it off 6397. Needs valgrind, redis-server and redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_PORT=${REDIS_PORT:-6397}
OUT=target/bench-redis-lua-costs
mkdir -p "$OUT"
rm -f "$OUT"/cg.*

# Each probe repeats its operation R times; the state and envelope are the shapes room.lua
# stores ("last,first,delivered,epoch,rt,ru,ub,db,pe,ck,gen,rid" and "<type> <envelope>").
R=10
cat > "$OUT/probe.lua" <<EOF
#!lua name=probe
local R = $R
local STATE = '1234567,1234500,1234566,7,3.5,1733570000123,1200,3400,12,127.0.0.1,65,a1b2c3d4e5f6'
local PATTERN = '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),?([^,]*),?([^,]*),?([^,]*),?([^,]*),?([^,]*),?(.*)\$'
local MESSAGE = 'offer  "to":"0e4f5a1c-1111-2222-3333-444455556666","data":"$(printf 'x%.0s' $(seq 1 140))"}'
local probes = {
  empty = function(keys) end,
  hget = function(keys) for _ = 1, R do redis.call('HGET', keys[1], 'f') end end,
  exists = function(keys) for _ = 1, R do redis.call('EXISTS', keys[1]) end end,
  time = function(keys) for _ = 1, R do redis.call('TIME') end end,
  pexpire = function(keys) for _ = 1, R do redis.call('PEXPIRE', keys[1], 60000) end end,
  hset = function(keys) for _ = 1, R do redis.call('HSET', keys[1], 'f', STATE) end end,
  rpush_ltrim = function(keys)
    for _ = 1, R do redis.call('RPUSH', keys[2], MESSAGE); redis.call('LTRIM', keys[2], -1, -1) end
  end,
  publish = function(keys) for _ = 1, R do redis.call('PUBLISH', keys[1], '1') end end,
  parse_state = function() for _ = 1, R do string.match(STATE, PATTERN) end end,
  sign_envelope = function()
    for _ = 1, R do
      local space = string.find(MESSAGE, ' ', 1, true)
      local _ = string.sub(MESSAGE, 1, space - 1) .. ' {"from":"0e4f5a1c-1111-2222-3333-444455556666",' ..
        string.sub(MESSAGE, space + 2)
    end
  end,
  table = function() for _ = 1, R do local _ = {} end end,
}
local function register(name)
  local probe = probes[name]
  redis.register_function(name, function(keys) probe(keys) return 1 end)
end
$(for name in empty hget exists time pexpire hset rpush_ltrim publish parse_state sign_envelope table; do
  echo "register('$name')"
done)
EOF

valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" redis-server --port "$REDIS_PORT" \
  --bind 127.0.0.1 --save '' --appendonly no > "$OUT/redis.log" 2>&1 &
REDIS=$!
trap 'kill $REDIS 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
# (A library's top level has no `string`, `pairs` or the like: only what it defines.)
[ "$(redis-cli -p "$REDIS_PORT" -x FUNCTION LOAD REPLACE < "$OUT/probe.lua")" = probe ] || {
  echo "the probe library did not load" >&2
  exit 1
}
redis-cli -p "$REDIS_PORT" HSET probe:h f "$(printf '%.0s1' $(seq 1 60))" >/dev/null

# Instructions per call of function $1 (1,000 calls, counted alone).
per_call() {
  callgrind_control -z "$REDIS" >/dev/null 2>&1
  for _ in $(seq 1 1000); do echo "FCALL $1 2 probe:h probe:l"; done |
    redis-cli -p "$REDIS_PORT" >/dev/null
  callgrind_control -d "$REDIS" >/dev/null 2>&1
  local dump
  dump=$(ls -t "$OUT"/cg.* | head -1)
  echo $(($(grep -m1 '^summary:' "$dump" | awk '{print $2}') / 1000))
}

empty=$(per_call empty)
printf '%-14s %12s\n' "FCALL, empty" "$empty"
for probe in hget exists time pexpire hset rpush_ltrim publish parse_state sign_envelope table; do
  printf '%-14s %12s\n' "$probe" $((($(per_call "$probe") - empty) / R))
done
