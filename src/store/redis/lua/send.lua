-- Send: identifies the sender by its token, checks every recipient and the sender's rate, then
-- signs each message with the sender's id and appends it to every recipient's mailbox, and
-- wakes them: all of the batch or none of it. Recipients the batch overflows are evicted after.
-- KEYS[1]: the room's peers hash.
-- ARGV: token digest ("" when none), mailbox capacity, rate (per second), burst, key expiry
--       (ms), then for each message: recipient id ("" for everyone else) and
--       "<type> <envelope without from and id>".
-- Reply: {error code [, message index | retry after (ms)]} or
--        {"ok", accepted, {departures: peer, reason, client key, ...}, emptied (0/1), now (µs)}.
local digest = ARGV[1]
local capacity, rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
key_ttl_ms = tonumber(ARGV[5])
local first_message = 6

local sender, err = identify(digest)
if err then return {err} end

local count = (#ARGV - first_message + 1) / 2
for index = 0, count - 1 do
  local to = ARGV[first_message + 2 * index]
  if to == sender then return {'self_recipient', index} end
  if to ~= '' and redis.call('HEXISTS', K_PEERS, to) == 0 then
    return {'unknown_recipient', index}
  end
end

-- The sender's token bucket, as src/rate_limit.rs counts it, on Redis's clock so that every
-- instance charges the same bucket.
local now = now_ms()
local box = load(sender)
if box == nil then return {'peer_not_found'} end
local tokens = box.rt or burst
local updated = box.ru or now
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed / 1000 * rate)
if count > tokens then
  local missing = math.min(count, burst) - tokens
  return {'rate_limited', math.ceil(missing / rate * 1000)}
end
box.rt, box.ru = tokens - count, now
save(sender, box)

local members = redis.call('HKEYS', K_PEERS)
local overflowing, seen_overflow = {}, {}
local signed_prefix = ' {"from":"' .. sender .. '",'
for index = 0, count - 1 do
  local to = ARGV[first_message + 2 * index]
  local message = ARGV[first_message + 2 * index + 1]
  local space = string.find(message, ' ', 1, true)
  local value = string.sub(message, 1, space - 1) .. signed_prefix .. string.sub(message, space + 2)
  if to ~= '' then
    if not push(to, value, capacity) and not seen_overflow[to] then
      seen_overflow[to] = true
      table.insert(overflowing, to)
    end
  else
    for _, member in ipairs(members) do
      if member ~= sender and not push(member, value, capacity) and not seen_overflow[member] then
        seen_overflow[member] = true
        table.insert(overflowing, member)
      end
    end
  end
end
for _, peer in ipairs(overflowing) do
  remove(peer, 'evicted', capacity)
end

finish(false)
return {'ok', count, departures_reply(), emptied and 1 or 0, now_us()}
