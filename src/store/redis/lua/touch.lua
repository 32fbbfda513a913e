-- Touch: peers with a stream or a poll open on the calling instance stay present: their
-- presence deadline moves to now + timeout, and their keys, the room's and the held-bytes hash
-- stay unexpired (that hash counts what these mailboxes hold, so it lives as long as they do).
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash (not in a Redis Cluster, where
-- `due.lua` keeps it).
-- ARGV: presence timeout (ms), key expiry (ms), then the peer ids.
-- Reply: the number of those peers still in the room.
local timeout_ms = num(ARGV[1])
key_ttl_ms = num(ARGV[2])
local deadline = now_ms() + timeout_ms
local present = 0
for index = 3, #ARGV do
  local peer = ARGV[index]
  if redis.call('ZSCORE', K_SEEN, peer) then
    redis.call('ZADD', K_SEEN, deadline, peer)
    present = present + 1
    touched[peer] = true
  end
end
if present > 0 then
  finish('extend')
  if K_HELD then redis.call('PEXPIRE', K_HELD, key_ttl_ms) end
end
return present
