-- Reserve a room before joining it: max_rooms holds across instances, because counting and
-- adding are one step. A room that exists (or is reserved) passes. A new reservation is also
-- put in the sweep index, due after the presence timeout, so that it is forgotten (the sweep
-- finds no room and releases it) if the join that follows never happens: an instance that
-- crashed, or lost Redis, in between leaves nothing counted for good.
-- KEYS[1]: the rooms zset (room -> when created, µs). KEYS[2]: the sweep index.
-- ARGV: room name, max rooms, expiry of these keys (ms), presence timeout (ms).
-- Reply: "ok" or "too_many_rooms".
local room, max_rooms, ttl_ms, timeout_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if redis.call('ZSCORE', KEYS[1], room) then return 'ok' end
if redis.call('ZCARD', KEYS[1]) >= max_rooms then return 'too_many_rooms' end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), room)
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], 'NX', now_ms + timeout_ms, room)
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
return 'ok'
