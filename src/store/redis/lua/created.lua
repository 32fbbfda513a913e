-- A join created the room: count it and index it for sweeping (after the join script, since
-- these keys live outside the room's slot).
-- KEYS[1]: the rooms zset. KEYS[2]: the sweep index (room -> earliest presence deadline, ms).
-- ARGV: room name, created (µs), the new peer's presence deadline (ms), expiry (ms).
local room = ARGV[1]
redis.call('ZADD', KEYS[1], ARGV[2], room)
redis.call('ZADD', KEYS[2], 'LT', ARGV[3], room)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 'ok'
