-- Leave: removes a peer at its own request (the token must be the peer's), tells the others,
-- and evicts whoever that overflows.
-- KEYS[1]: the room's peers hash. KEYS[2]: the held-bytes hash.
-- ARGV: peer id, token digest ("" when none was sent), mailbox capacity, key expiry (ms),
--       mailbox max bytes.
-- Reply: {error code} or {"ok", {departures: peer, reason, client key, ...}, emptied (0/1), now (µs)}.
local peer, digest = ARGV[1], ARGV[2]
capacity = num(ARGV[3])
key_ttl_ms = num(ARGV[4])
max_bytes = num(ARGV[5])

local err = authorize(peer, digest)
if err then return {err} end
remove(peer, 'left')
finish(false)
return {'ok', departures_reply(), emptied and 1 or 0, now_us()}
