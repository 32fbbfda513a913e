-- A room was emptied: forget it, unless it was created again since (a join on another
-- instance recreated it after it emptied: its entry is newer than the emptying).
-- KEYS[1]: the rooms zset. KEYS[2]: the sweep index.
-- ARGV: room name, when it emptied (µs).
local room, emptied = ARGV[1], tonumber(ARGV[2])
local created = tonumber(redis.call('ZSCORE', KEYS[1], room))
if created == nil or created <= emptied then
  redis.call('ZREM', KEYS[1], room)
  redis.call('ZREM', KEYS[2], room)
  return 1
end
return 0
