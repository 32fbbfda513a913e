-- Read: acknowledges what the reader has delivered, then returns what follows its cursor, as
-- src/mailbox.rs reads: gapless from cursor + 1, or an explicit reset.
-- KEYS[1]: the room's peers hash.
-- ARGV: peer id, cursor, acknowledged id ("" for none), stream epoch ("" for a poll),
--       replay window, most entries to return.
-- Reply: {"closed"}, {"replaced"}, or
--        {"ok", newest id, reset ("", "expired" or "ahead"), id of the first entry, {entries}}.
local peer, cursor, ack, epoch = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local replay_window, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HEXISTS', K_PEERS, peer) == 0 then return {'closed'} end
if ack ~= '' then
  acknowledge(peer, tonumber(ack), replay_window)
  flush()
end
local box = load(peer)
if box == nil then return {'closed'} end
local last, first = box.last, box.first
if epoch ~= '' and box.epoch ~= tonumber(epoch) then return {'replaced'} end
if cursor > last then
  return {'ok', last, 'ahead', last + 1, {}}
end
local reset, start = '', cursor + 1
if cursor + 1 < first then
  reset, start = 'expired', first
end
local entries = redis.call('LRANGE', k_list(peer), start - first, start - first + limit - 1)
return {'ok', last, reset, start, entries}
