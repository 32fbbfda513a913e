-- Send: identifies the sender by its token, checks every recipient, the sender's rate and the
-- bytes held for its address and in total, then signs each message with the sender's id and
-- appends it to every recipient's mailbox, and wakes them: all of the batch or none of it.
-- Recipients the batch overflows are evicted after.
-- Bytes: each stored envelope counts once per recipient mailbox, charged to the sender's client
-- key (from its mailbox state; none for a peer joined without an address) and to the total,
-- both in KEYS[2]: charged for the whole batch before anything is appended (and taken back if
-- that goes past a limit), so that the check and the charge are the same two commands; a
-- recipient evicted instead of receiving is given back by `flush`.
-- Idempotency: with a key, right after identifying the sender, a send remembered under it in
-- the sender's `i:`/`it:` keys (room.lua) within the window is answered again, with nothing
-- appended or charged, when its fingerprint is the batch's, and refused
-- (idempotency_key_reused) when not; an accepted send is remembered with its append, the
-- oldest key forgotten past the per-peer cap. Refusals are not remembered. Without a key the
-- script does nothing of this.
-- In a Redis Cluster (no KEYS[2], room.lua) the instance has charged the batch's bytes at
-- their most (every recipient of the room) to the sender's client key before this script, and
-- says so in ARGV: the script gives that charge back in its held-bytes reply and charges what
-- it stores, so that the instance's settlement leaves exactly what is held; or the instance
-- says which limit the charge was refused by, and the script answers that refusal where it
-- would have checked the limits itself (after the rate, as "Which error wins" orders them).
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash (not in a Redis Cluster).
-- ARGV: token digest ("" when none), mailbox capacity, rate (per second), burst, key expiry
--       (ms), mailbox max bytes, client max held bytes, max held bytes, idempotency key ("" for
--       none), the batch's fingerprint (32 hex), idempotency window (ms), keys per peer,
--       (Redis Cluster, else "") the client key charged, the bytes charged, the refusal the
--       charge met ("" for none), then for each message: recipient id ("" for everyone
--       else) and "<type> <envelope without from and id>".
-- Reply: {error code [, message index | retry after (ms)]} or
--        {"ok", accepted, {departures: peer, reason, client key, ...}, emptied (0/1), now (µs)},
--        and a sixth element "replayed" when the send was answered from its idempotency key.
local digest = ARGV[1]
local rate, burst = num(ARGV[3]), num(ARGV[4])
capacity = num(ARGV[2])
key_ttl_ms = num(ARGV[5])
max_bytes = num(ARGV[6])
local client_max_held, max_held = num(ARGV[7]), num(ARGV[8])
local idempotency_key, fingerprint = ARGV[9], ARGV[10]
local window_ms, keys_per_peer = num(ARGV[11]), num(ARGV[12])
local charged_client, charged, charge_refusal = ARGV[13], num(ARGV[14]) or 0, ARGV[15]
local first_message = 16
-- Given back whatever the answer: what is stored is charged again below.
if CLUSTER then charge(charged_client, -charged) end

local sender, err = identify(digest)
if err then return {err} end

-- A send remembered under the key: "<fingerprint> <accepted>" in i:<sender>, its expiry (ms) in
-- it:<sender>. Expired entries are not swept: the per-peer cap bounds them, the oldest go first
-- when it is reached, and both keys expire with their newest entry; a remembered key's own
-- expiry is checked here.
local sends, send_expiry, now
if idempotency_key ~= '' then
  now = now_ms()
  sends, send_expiry = k_sends(sender), k_send_expiry(sender)
  local remembered = redis.call('HGET', sends, idempotency_key)
  if remembered then
    local expires = num(redis.call('ZSCORE', send_expiry, idempotency_key))
    if expires == nil or expires <= now then
      redis.call('ZREM', send_expiry, idempotency_key)
      redis.call('HDEL', sends, idempotency_key)
    else
      local space = string.find(remembered, ' ', 1, true)
      if string.sub(remembered, 1, space - 1) ~= fingerprint then
        return {'idempotency_key_reused'}
      end
      return {'ok', num(string.sub(remembered, space + 1)), {}, 0, now_us(), 'replayed'}
    end
  end
end

local count = (#ARGV - first_message + 1) / 2
-- The sender's and the recipients' mailbox states, in one command; a recipient with a state
-- is in the room (states go with their peers), and only one without is looked up.
local named, broadcast = {sender}, false
for index = 0, count - 1 do
  local to = ARGV[first_message + 2 * index]
  if to == '' then broadcast = true else table.insert(named, to) end
end
preload(named)
for index = 0, count - 1 do
  local to = ARGV[first_message + 2 * index]
  if to == sender then return {'self_recipient', index} end
  if to ~= '' and boxes[to] == nil and redis.call('HEXISTS', K_PEERS, to) == 0 then
    return {'unknown_recipient', index}
  end
end

-- The sender's token bucket, as src/rate_limit.rs counts it, on Redis's clock so that every
-- instance charges the same bucket.
now = now or now_ms()
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

-- The signed values, and the bytes they will hold: once per recipient mailbox. The room's
-- members are only needed for a message to everyone else.
local members = broadcast and redis.call('HKEYS', K_PEERS) or {}
local signed_prefix = ' {"from":"' .. sender .. '",'
local values, sizes = {}, {}
local needed = 0
for index = 0, count - 1 do
  local to = ARGV[first_message + 2 * index]
  local message = ARGV[first_message + 2 * index + 1]
  local space = string.find(message, ' ', 1, true)
  local value = string.sub(message, 1, space - 1) .. signed_prefix .. string.sub(message, space + 2)
  local size = #value - space
  values[index], sizes[index] = value, size
  needed = needed + size * (to ~= '' and 1 or #members - 1)
end
local client = box.ck
if CLUSTER then
  if charge_refusal ~= '' then return {charge_refusal} end
else
  if client ~= '' and add_held(client, needed) > client_max_held then
    add_held(client, -needed)
    return {'too_many_bytes_held'}
  end
  local total = add_held('*', needed)
  if total > max_held then
    add_held('*', -needed)
    if client ~= '' then add_held(client, -needed) end
    return {'server_full'}
  end
  if total == needed then redis.call('PEXPIRE', K_HELD, key_ttl_ms) end
  -- Charged already: what the pushes charge again below only evens this out.
  charge(client, -needed)
end

box.rt, box.ru = tokens - count, now
save(sender, box)

local overflowing, seen_overflow = {}, {}
for index = 0, count - 1 do
  local to = ARGV[first_message + 2 * index]
  local value, size = values[index], sizes[index]
  if to ~= '' then
    if not push(to, value, size, client) and not seen_overflow[to] then
      seen_overflow[to] = true
      table.insert(overflowing, to)
    end
  else
    for _, member in ipairs(members) do
      if member ~= sender and not push(member, value, size, client) and not seen_overflow[member] then
        seen_overflow[member] = true
        table.insert(overflowing, member)
      end
    end
  end
end
for _, peer in ipairs(overflowing) do
  remove(peer, 'evicted')
end

-- Remembered with the append. The oldest key goes first past the cap (before the new one is
-- added, so that a tie in expiry cannot drop the new one); both keys live as long as their
-- newest entry.
if idempotency_key ~= '' then
  if redis.call('ZCARD', send_expiry) >= keys_per_peer then
    local oldest = redis.call('ZPOPMIN', send_expiry)
    if oldest[1] then redis.call('HDEL', sends, oldest[1]) end
  end
  redis.call('HSET', sends, idempotency_key, fingerprint .. ' ' .. count)
  redis.call('ZADD', send_expiry, now + window_ms, idempotency_key)
  redis.call('PEXPIRE', sends, window_ms)
  redis.call('PEXPIRE', send_expiry, window_ms)
end

finish(false)
return {'ok', count, departures_reply(), emptied and 1 or 0, now_us()}
