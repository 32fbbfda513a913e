-- Read: acknowledges what the reader has delivered, then returns what follows its cursor, as
-- src/mailbox.rs reads: gapless from cursor + 1, or an explicit reset; at most `limit` entries
-- and, past the first entry, at most `budget` bytes of envelopes.
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash.
-- ARGV: peer id, cursor, acknowledged id ("" for none), stream epoch ("" for none),
--       replay window, most entries to return, replay window bytes, most bytes to return,
--       poll epoch ("" for none).
-- Reply: {"closed"}, {"replaced"} (a newer reader of the ticket's kind opened), or
--        {"ok", newest id, reset ("", "expired", "ahead" or "lost"), id of the first entry,
--        {entries}}. "lost": the cursor is of a generation before the mailbox's seal (room.lua,
--        "Seal"); a reader ahead of the mailbox on a server that is not the history that
--        assigned its ids seals it, and is told "lost" rather than "ahead".
local peer, cursor, ack, epoch = ARGV[1], num(ARGV[2]), ARGV[3], ARGV[4]
local replay_window, limit = num(ARGV[5]), num(ARGV[6])
local replay_bytes, budget, poll_epoch = num(ARGV[7]), num(ARGV[8]), ARGV[9]
-- A peer's state goes with it: none means the peer left.
local box = load(peer)
if box == nil then return {'closed'} end
if ack ~= '' then
  acknowledge(peer, num(ack), replay_window, replay_bytes)
  flush()
end
local last, first = box.last, box.first
if epoch ~= '' and box.epoch ~= num(epoch) then return {'replaced'} end
if poll_epoch ~= '' and box.pe ~= num(poll_epoch) then return {'replaced'} end
if cursor > last and seal_if_moved(peer, box) then
  flush()
  last, first = box.last, box.first
end
if cursor > last then
  return {'ok', last, 'ahead', last + 1, {}}
end
local reset, start = '', cursor + 1
if cursor + 1 < first then
  reset, start = 'expired', first
  if math.floor(cursor / GENERATION) < box.gen then reset = 'lost' end
end
local count = math.min(limit, last - start + 1)
if count <= 0 then return {'ok', last, reset, start, {}} end
-- Only a mailbox holding more than the budget needs its sizes looked at.
if box.ub + box.db > budget then
  local sizes = redis.call('LRANGE', k_sizes(peer), start - first, start - first + count - 1)
  if #sizes > 0 then
    local bytes, fits = 0, 0
    for _, item in ipairs(sizes) do
      local size = parse_size(item)
      if fits > 0 and bytes + size > budget then break end
      bytes, fits = bytes + size, fits + 1
    end
    count = fits
  end
end
local entries = redis.call('LRANGE', k_list(peer), start - first, start - first + count - 1)
return {'ok', last, reset, start, entries}
