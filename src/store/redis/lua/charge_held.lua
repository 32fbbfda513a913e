-- Redis Cluster only: charge a send's bytes, before its script, to the sender's client key and
-- to the total in the held-bytes hash (whose layout room.lua gives), unless that takes either
-- past its limit: the check send.lua makes itself outside a cluster, in the same order (the
-- address's limit, then the total's). Charged at the batch's most (a broadcast to every peer a
-- room may have); send.lua's held-bytes reply gives back the difference.
-- KEYS[1]: the held-bytes hash.
-- ARGV: client key ("" for none: only the total is charged), bytes, client max held bytes, max
--       held bytes, expiry of the hash (ms).
-- Reply: "" (charged), "too_many_bytes_held" or "server_full" (nothing charged).
local client, bytes = ARGV[1], tonumber(ARGV[2])
local client_max, max_total = tonumber(ARGV[3]), tonumber(ARGV[4])
local function add(field, delta)
  local count = redis.call('HINCRBY', KEYS[1], field, delta)
  if count <= 0 then redis.call('HDEL', KEYS[1], field) end
  return count
end
if client ~= '' and add(client, bytes) > client_max then
  add(client, -bytes)
  return 'too_many_bytes_held'
end
if add('*', bytes) > max_total then
  add('*', -bytes)
  if client ~= '' then add(client, -bytes) end
  return 'server_full'
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return ''
