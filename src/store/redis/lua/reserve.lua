-- Admit a join on the deployment-wide keys, before the join script: the address's join rate
-- (`join_rate.lua`, prepended), then max_rooms, max_peers_per_client and max_rooms_per_client,
-- which hold across instances because checking and counting are one step. The rate is charged
-- whatever follows, as every join is. Checks in the order of docs/API.md ("Which error wins");
-- the room's own checks (peer_present, room_full) are the join script's, and come first because
-- a refusal here is only answered once the room has been looked at.
-- A new room is reserved: counted in the rooms zset and put in the sweep index, due after the
-- presence timeout, so that it is forgotten (the sweep finds no room and releases it) if the
-- join that follows never happens (an instance that crashed, or lost Redis, in between). A join
-- refused after this step gives everything back (`clients.lua`, and `release.lua` with the
-- reservation's time).
-- KEYS[1]: the rooms zset (room -> when created, µs). KEYS[2]: the sweep index.
-- KEYS[3]: the clients hash (client key -> live peers).
-- KEYS[4]: the client rooms hash (client key -> rooms where it has peers;
--          "<client key> <room>" -> its peers in that room).
-- KEYS[5]: the peer count (every live peer of the deployment, for /metrics).
-- KEYS[6]: the address's join bucket (unused when the join is not counted).
-- ARGV: room name, max rooms, expiry of these keys (ms), presence timeout (ms), client key (""
--       when not counted), max peers per client, max rooms per client, join rate (per second),
--       join burst.
-- Reply: {"ok", reserved (when this reserved the room, µs; 0 when it existed)},
--        {"too_many_joins", wait (ms)} or {"too_many_rooms"}, {"too_many_peers_for_client"},
--        {"too_many_rooms_for_client"}.
local room, max_rooms, ttl_ms, timeout_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local client, max_peers, max_client_rooms = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
if client ~= '' then
  local wait = charge_join(KEYS[6], ARGV[8], ARGV[9])
  if wait > 0 then return {'too_many_joins', wait} end
end
local exists = redis.call('ZSCORE', KEYS[1], room)
if not exists and redis.call('ZCARD', KEYS[1]) >= max_rooms then return {'too_many_rooms'} end
local here = client .. ' ' .. room
if client ~= '' then
  if (tonumber(redis.call('HGET', KEYS[3], client)) or 0) >= max_peers then
    return {'too_many_peers_for_client'}
  end
  if redis.call('HEXISTS', KEYS[4], here) == 0
    and (tonumber(redis.call('HGET', KEYS[4], client)) or 0) >= max_client_rooms then
    return {'too_many_rooms_for_client'}
  end
end
local reserved = 0
if not exists then
  local t = redis.call('TIME')
  reserved = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('ZADD', KEYS[1], reserved, room)
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], 'NX', now_ms + timeout_ms, room)
end
if client ~= '' then
  redis.call('HINCRBY', KEYS[3], client, 1)
  if redis.call('HINCRBY', KEYS[4], here, 1) == 1 then
    redis.call('HINCRBY', KEYS[4], client, 1)
  end
end
redis.call('INCR', KEYS[5])
for index = 1, 5 do
  redis.call('PEXPIRE', KEYS[index], ttl_ms)
end
return {'ok', reserved}
