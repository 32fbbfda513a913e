-- Charge one join to a client address (join_rate_per_sec, join_burst), deployment-wide: the
-- token bucket of src/rate_limit.rs, on Redis's clock so that every instance charges the same
-- bucket (as send.lua does for the send rate). The key expires once the bucket would be full
-- again, which is the same as no bucket, so only addresses that joined lately are kept.
-- KEYS[1]: the address's bucket, "<tokens> <when counted (ms)>".
-- ARGV: rate (per second), burst.
-- Reply: 0 (charged) or how long until a join is allowed (ms, at least 1).
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tokens, updated = burst, now
local packed = redis.call('GET', KEYS[1])
if packed then
  local stored, at = string.match(packed, '^(%S+) (%S+)$')
  tokens, updated = tonumber(stored) or burst, tonumber(at) or now
end
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed / 1000 * rate)
if tokens < 1 then
  return math.max(1, math.ceil((1 - tokens) / rate * 1000))
end
tokens = tokens - 1
local full_in_ms = math.ceil((burst - tokens) / rate * 1000) + 1
redis.call('SET', KEYS[1], string.format('%.6f %d', tokens, now), 'PX', full_in_ms)
return 0
