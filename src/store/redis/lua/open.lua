-- Open a reader: acknowledges what the client says it has, then makes the caller the peer's
-- live stream (kind "stream") or its one poll in flight (kind "poll") by bumping that kind's
-- epoch; the wake-up tells an older reader of the kind, on whatever instance, that it was
-- replaced (streams and polls do not end each other). Seals the mailbox if this server is not
-- the history that assigned its ids (room.lua, "Seal").
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash.
-- ARGV: peer id, acknowledged id ("" for none), replay window, replay window bytes, kind, the
--       open's nonce: its wake-up says "o<nonce>", so that the reader that opened is not woken
--       by it (store::OwnOpens; "" or 0: "1", as every other wake-up).
-- Reply: {"closed"} or {"ok", epoch, newest id}.
local peer, ack, replay_window = ARGV[1], ARGV[2], num(ARGV[3])
local replay_bytes, kind = num(ARGV[4]), ARGV[5]
-- A peer's state goes with it: none means the peer left.
local box = load(peer)
if box == nil then return {'closed'} end
if ack ~= '' then acknowledge(peer, num(ack), replay_window, replay_bytes) end
-- A reader that opens on a server that lost the mailbox's last writes learns it now (a `lost`
-- reset on its first read), not only when the next message comes.
seal_if_moved(peer, box)
local epoch
if kind == 'poll' then
  box.pe = box.pe + 1
  epoch = box.pe
else
  box.epoch = box.epoch + 1
  epoch = box.epoch
end
save(peer, box)
flush()
local nonce = ARGV[6] or ''
wake_up(peer, (nonce ~= '' and nonce ~= '0') and ('o' .. nonce) or nil)
return {'ok', epoch, box.last}
