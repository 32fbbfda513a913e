-- Authorize: whether the token is the peer's (for a stream or a poll about to read its mailbox),
-- and if so, the peer counts as present from now on.
-- KEYS[1]: the room's peers hash.
-- ARGV: peer id, token digest ("" when none), presence timeout (ms), key expiry (ms).
-- Reply: {error code} or {"ok"}.
local peer, digest, timeout_ms = ARGV[1], ARGV[2], num(ARGV[3])
key_ttl_ms = num(ARGV[4])
local err = authorize(peer, digest)
if err then return {err} end
redis.call('ZADD', K_SEEN, 'XX', now_ms() + timeout_ms, peer)
touched[peer] = true
finish('extend')
return {'ok'}
