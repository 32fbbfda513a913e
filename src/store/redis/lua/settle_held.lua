-- Redis Cluster only: apply what a room script charged and released (its held-bytes reply,
-- room.lua) to the held-bytes hash, as `flush` in room.lua does outside a cluster: each client
-- key's count and the total move by the deltas, and a count that reaches 0 (or below, after the
-- hash expired while bytes were held) is removed.
-- KEYS[1]: the held-bytes hash.
-- ARGV: expiry of the hash (ms), then client key ("" for none: only the total), delta, ...
-- Reply: the total held after.
local function add(field, delta)
  local count = redis.call('HINCRBY', KEYS[1], field, delta)
  if count <= 0 then redis.call('HDEL', KEYS[1], field) end
  return count
end
local total = 0
for index = 2, #ARGV, 2 do
  local client, delta = ARGV[index], tonumber(ARGV[index + 1])
  if client ~= '' then add(client, delta) end
  total = total + delta
end
local after = 0
if total ~= 0 then after = add('*', total) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return after
