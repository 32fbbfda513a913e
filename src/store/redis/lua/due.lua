-- The rooms due for a sweep: whose earliest presence deadline has passed, by Redis's clock.
-- KEYS[1]: the sweep index. KEYS[2]: the rooms zset.
-- ARGV: most rooms to return, expiry of these keys (ms).
-- Reply: room names.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
