-- Acknowledge: marks what a stream has written as delivered, when the stream has nothing else
-- to read (otherwise the acknowledgement rides on its next read).
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash.
-- ARGV: peer id, acknowledged id, replay window, replay window bytes.
-- Reply: 1 if the peer is still in the room, 0 otherwise.
local peer, id, replay_window = ARGV[1], num(ARGV[2]), num(ARGV[3])
local replay_bytes = num(ARGV[4])
-- A peer's state goes with it: none means the peer left.
if load(peer) == nil then return 0 end
acknowledge(peer, id, replay_window, replay_bytes)
flush()
return 1
