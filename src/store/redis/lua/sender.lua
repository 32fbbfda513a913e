-- Redis Cluster only: the client key a token's peer is charged to (its record's), which the
-- instance needs to charge a send's bytes before the send script (`charge_held.lua`), and the
-- room's peers now, which a broadcast is charged for. The instance keeps the client key per
-- token (a peer's never changes), and asks again only for a broadcast's count.
-- KEYS[1]: the room's peers hash (room.lua gives the layout).
-- ARGV: token digest.
-- Reply: {client key ("" for a peer not counted against an address), peers in the room}, or
--        nil when the token is no peer's (the send script then says why).
local base = string.sub(KEYS[1], 1, #KEYS[1] - 5)
local peer = redis.call('HGET', base .. 'tokens', ARGV[1])
if not peer then return false end
local record = redis.call('HGET', KEYS[1], peer)
if not record then return false end
return {string.match(record, '^[^\n]*\n[^\n]*\n([^\n]*)\n') or '', redis.call('HLEN', KEYS[1])}
