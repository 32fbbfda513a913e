-- The rooms due for a sweep: whose earliest presence deadline has passed, by Redis's clock.
-- Also keeps the deployment-wide keys from expiring while any instance runs.
-- KEYS[1]: the sweep index. KEYS[2..]: the other deployment-wide keys (the rooms zset, the
-- clients and client rooms hashes, the peer count, the held bytes: in a Redis Cluster the room
-- scripts cannot refresh the last).
-- ARGV: most rooms to return, expiry of these keys (ms).
-- Reply: room names.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for index = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[index], ARGV[2])
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
