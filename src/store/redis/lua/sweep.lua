-- Sweep a room: removes, with reason timeout, every peer whose presence deadline has passed.
-- Atomic, so that however many instances sweep the same room at once, each peer leaves once.
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash.
-- ARGV: mailbox capacity, key expiry (ms), mailbox max bytes.
-- Reply: {{departures: peer, reason, client key, ...}, the earliest deadline left (ms, -1 when the room is
--        gone), emptied (0/1), now (µs)}.
capacity = num(ARGV[1])
key_ttl_ms = num(ARGV[2])
max_bytes = num(ARGV[3])
local now = now_ms()
for _, peer in ipairs(redis.call('ZRANGEBYSCORE', K_SEEN, '-inf', now)) do
  remove(peer, 'timeout')
end
local earliest = -1
if not emptied then
  local first = redis.call('ZRANGE', K_SEEN, 0, 0, 'WITHSCORES')
  if first[2] then earliest = num(first[2]) end
  if redis.call('EXISTS', K_PEERS) == 0 then emptied = true end
end
finish(false)
return {departures_reply(), earliest, emptied and 1 or 0, now_us()}
