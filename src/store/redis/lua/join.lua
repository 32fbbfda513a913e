-- Join: adds a peer to the room (creating the room), announces it to every peer already there,
-- and evicts those whose backlog the announcement overflows. One atomic step, so that
-- max_peers_per_room holds however many instances accept joins at once.
-- The announcement is a server event: its bytes count in the deployment's total, charged to no
-- address.
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash.
-- ARGV: peer id, token digest, client key ("" when not counted), peer info JSON (without
--       the peer id, which is the field's name),
--       announcement ("join <envelope>"),
--       max peers, mailbox capacity, send burst, presence timeout (ms), key expiry (ms),
--       mailbox max bytes.
-- Reply: {"peer_present"} (the peer id is in the room: a resumed join may not replace it),
--        {"room_full"} or {"ok", created (0/1), {peer id, info JSON, ... of the peers before,
--        in join order},
--        {departures: peer, reason, client key, ...}, now (µs), presence deadline (ms),
--        emptied (0/1: the evictions the announcement caused took every peer, the joiner
--        too, and the room is gone)}.
local peer, digest, client, info, announcement = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_peers, burst = num(ARGV[6]), ARGV[8]
capacity = num(ARGV[7])
local timeout_ms = num(ARGV[9])
key_ttl_ms = num(ARGV[10])
max_bytes = num(ARGV[11])

if redis.call('HEXISTS', K_PEERS, peer) == 1 then
  return {'peer_present'}
end
local count = redis.call('HLEN', K_PEERS)
if count >= max_peers then
  return {'room_full'}
end

local records = {}
local all = redis.call('HGETALL', K_PEERS)
for index = 1, #all, 2 do
  local seq, rest = string.match(all[index + 1], '^(%d+)\n[^\n]*\n[^\n]*\n(.*)$')
  table.insert(records, {num(seq), all[index], rest})
end
table.sort(records, function(a, b) return a[1] < b[1] end)
local before = {}
for _, r in ipairs(records) do
  table.insert(before, r[2])
  table.insert(before, r[3])
end

local now = now_ms()
local seq = redis.call('INCR', K_SEQ)
redis.call('HSET', K_PEERS, peer, seq .. '\n' .. digest .. '\n' .. client .. '\n' .. info)
redis.call('HSET', K_TOKENS, digest, peer)
redis.call('ZADD', K_SEEN, now + timeout_ms, peer)
save(peer, {last = 0, first = 1, delivered = 0, epoch = 0, rt = num(burst), ru = now,
            ub = 0, db = 0, pe = 0, ck = client, gen = 0, rid = server_rid()})
touched[peer] = true

local overflowing = {}
local announcement_size = size_of(announcement)
for _, other in ipairs(redis.call('HKEYS', K_PEERS)) do
  if other ~= peer and not push(other, announcement, announcement_size, '') then
    table.insert(overflowing, other)
  end
end
for _, other in ipairs(overflowing) do
  remove(other, 'evicted')
end

finish('always')
return {'ok', count == 0 and 1 or 0, before, departures_reply(), now_us(), now + timeout_ms,
        emptied and 1 or 0}
