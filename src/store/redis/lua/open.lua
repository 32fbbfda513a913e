-- Open a stream: acknowledges what the reconnecting client says it has, then makes the caller
-- the peer's live stream by bumping the epoch; the wake-up tells an older stream, on whatever
-- instance, that it was replaced.
-- KEYS[1]: the room's peers hash.
-- ARGV: peer id, acknowledged id ("" for none), replay window.
-- Reply: {"closed"} or {"ok", epoch, newest id}.
local peer, ack, replay_window = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HEXISTS', K_PEERS, peer) == 0 then return {'closed'} end
if ack ~= '' then acknowledge(peer, tonumber(ack), replay_window) end
local box = load(peer)
if box == nil then return {'closed'} end
box.epoch = box.epoch + 1
save(peer, box)
flush()
local epoch, last = box.epoch, box.last
redis.call('PUBLISH', k_wake(peer), '1')
return {'ok', epoch, last}
