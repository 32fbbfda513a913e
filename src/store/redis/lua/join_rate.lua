-- Shared by `joins.lua` and `reserve.lua` (prepended to each when it is loaded): the join rate
-- of one client address (join_rate_per_sec, join_burst), deployment-wide. The token bucket of
-- src/rate_limit.rs, on Redis's clock so that every instance charges the same bucket (as send.lua
-- does for the send rate). The bucket's key, "<tokens> <when counted (ms)>", expires once the
-- bucket would be full again, which is the same as no bucket, so only addresses that joined
-- lately are kept.

-- Charges one join to the bucket at `key`: 0, or how long until a join is allowed (ms, ≥ 1).
local function charge_join(key, rate, burst)
  rate, burst = tonumber(rate), tonumber(burst)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local tokens, updated = burst, now
  local packed = redis.call('GET', key)
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
  redis.call('SET', key, string.format('%.6f %d', tokens, now), 'PX', full_in_ms)
  return 0
end
