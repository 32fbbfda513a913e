-- Live peers per client address, deployment-wide (max_peers_per_client). Counted apart from
-- the rooms, since an address's peers are in many rooms (many slots): admitted before the join
-- script runs, given back when the join fails and when each peer departs. An instance that
-- crashes between the two steps leaves a count one too high until the key expires.
-- KEYS[1]: the clients hash (client key -> live peers).
-- ARGV: "admit", client key, limit, expiry (ms)  -> "ok" or "too_many"
--   or  "release", expiry (ms), client key, ...  -> the number released
local action = ARGV[1]
if action == 'admit' then
  local count = tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0
  if count >= tonumber(ARGV[3]) then return 'too_many' end
  redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 'ok'
end
local released = 0
for index = 3, #ARGV do
  if redis.call('HINCRBY', KEYS[1], ARGV[index], -1) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[index])
  end
  released = released + 1
end
return released
