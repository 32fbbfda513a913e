-- Peers that left a room (or a join refused after `reserve.lua` counted it) give back their
-- places: in their address's live peers (max_peers_per_client), in its rooms
-- (max_rooms_per_client: a room where the address has no peer left no longer counts), and in
-- the deployment's peer count. Counted apart from the rooms, since an address's peers are in
-- many rooms (many slots): counted by `reserve.lua` before the join script runs, given back
-- here after the script that removed the peers. An instance that crashes between the two steps
-- leaves the counts one too high until the keys expire.
-- KEYS[1]: the clients hash. KEYS[2]: the client rooms hash. KEYS[3]: the peer count
-- (`reserve.lua` says what they hold).
-- ARGV: expiry (ms), room name, then one client key per departed peer ("" when not counted).
-- Reply: the number released.
local ttl_ms, room = ARGV[1], ARGV[2]
local released = 0
for index = 3, #ARGV do
  local client = ARGV[index]
  if client ~= '' then
    if redis.call('HINCRBY', KEYS[1], client, -1) <= 0 then
      redis.call('HDEL', KEYS[1], client)
    end
    local here = client .. ' ' .. room
    if redis.call('HINCRBY', KEYS[2], here, -1) <= 0 then
      redis.call('HDEL', KEYS[2], here)
      if redis.call('HINCRBY', KEYS[2], client, -1) <= 0 then
        redis.call('HDEL', KEYS[2], client)
      end
    end
  end
  if redis.call('DECR', KEYS[3]) < 0 then
    redis.call('SET', KEYS[3], 0)
  end
  released = released + 1
end
for index = 1, 3 do
  redis.call('PEXPIRE', KEYS[index], ttl_ms)
end
return released
