-- Acknowledge: marks what a stream has written as delivered, when the stream has nothing else
-- to read (otherwise the acknowledgement rides on its next read).
-- KEYS[1]: the room's peers hash.
-- ARGV: peer id, acknowledged id, replay window.
-- Reply: 1 if the peer is still in the room, 0 otherwise.
local peer, id, replay_window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('HEXISTS', K_PEERS, peer) == 0 then return 0 end
acknowledge(peer, id, replay_window)
flush()
return 1
