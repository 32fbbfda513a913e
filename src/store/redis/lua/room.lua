-- Shared by every script that touches one room (prepended to each when it is loaded).
--
-- KEYS[1] is the room's peers hash, "<prefix>:{<room>}:peers". Every key of a room carries the
-- room's "{<room>}" hash tag, so a script stays on one Redis Cluster slot; the other keys are
-- derived from KEYS[1] here rather than passed, because which mailboxes a script touches is only
-- known inside it (a join announces itself to every peer).
--
-- Keys of a room:
--   peers      hash  peer id -> "<join seq>\n<token digest>\n<client key>\n<peer info JSON>"
--                    (client key: the address held to max_peers_per_client, or "")
--   tokens     hash  token digest (SHA-256, hex) -> peer id
--   seen       zset  peer id -> presence deadline (ms): removed with reason timeout after it
--   seq        string, the last join sequence number (join order)
--   m:<peer>   list  the peer's stored messages, "<type> <envelope without id>", oldest first
--   h:<peer>   hash  the peer's mailbox state: last (newest id), first (id of the list's head;
--                    last + 1 when empty), delivered (ids up to it are delivered), epoch (bumped
--                    by each new live stream), rt/ru (send-rate tokens and when they were counted)
-- Channel w:<peer> wakes the peer's readers; it carries nothing they rely on.

local base = string.sub(KEYS[1], 1, #KEYS[1] - 5) -- strip "peers"
local K_PEERS = KEYS[1]
local K_TOKENS = base .. 'tokens'
local K_SEEN = base .. 'seen'
local K_SEQ = base .. 'seq'
local function k_list(peer) return base .. 'm:' .. peer end
local function k_meta(peer) return base .. 'h:' .. peer end
local function k_wake(peer) return base .. 'w:' .. peer end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Peers whose readers must look again, and mailboxes whose expiry must be refreshed.
local woken = {}
local touched = {}
-- How long keys live after their last refresh (ms); set by each script from its arguments.
-- Every key gets it when created; joins and presence refreshes renew the room's and the
-- listening peers' keys, so keys outlive their peers but not the instances looking after them.
local key_ttl_ms = 0

-- Appends `value` under the mailbox's next id, unless `capacity` messages are undelivered.
local function push(peer, value, capacity)
  local meta = k_meta(peer)
  local state = redis.call('HMGET', meta, 'last', 'delivered')
  local last, delivered = tonumber(state[1]), tonumber(state[2])
  if last == nil then
    return false -- a peer without mailbox state (lost to eviction by Redis): remove it
  end
  if last - delivered >= capacity then
    return false
  end
  if redis.call('RPUSH', k_list(peer), value) == 1 then
    -- A list that was empty did not exist: the new one needs its expiry.
    redis.call('PEXPIRE', k_list(peer), key_ttl_ms)
  end
  redis.call('HSET', meta, 'last', last + 1)
  woken[peer] = true
  return true
end

-- Removes `peer` with `reason` and tells the others; a `leave` that overflows another mailbox
-- evicts that peer too, and so on. Appends each departure to `departures` as
-- {peer, reason, client key}.
-- Returns nothing; `emptied` is set once the last peer went (and the room's keys are gone).
local departures = {}
local emptied = false
local function remove(peer, reason, capacity)
  local pending = {{peer, reason}}
  while #pending > 0 do
    local item = table.remove(pending)
    local gone, why = item[1], item[2]
    local record = redis.call('HGET', K_PEERS, gone)
    if record then
      local digest, client = string.match(record, '^[^\n]*\n([^\n]*)\n([^\n]*)\n')
      redis.call('HDEL', K_PEERS, gone)
      redis.call('HDEL', K_TOKENS, digest)
      redis.call('ZREM', K_SEEN, gone)
      redis.call('DEL', k_list(gone), k_meta(gone))
      touched[gone] = nil
      woken[gone] = true
      table.insert(departures, {gone, why, client})
      local event = 'leave {"type":"leave","data":{"peer_id":"' .. gone .. '","reason":"' .. why .. '"}}'
      for _, other in ipairs(redis.call('HKEYS', K_PEERS)) do
        if not push(other, event, capacity) then
          local queued = false
          for _, p in ipairs(pending) do
            if p[1] == other then queued = true end
          end
          if not queued then table.insert(pending, {other, 'evicted'}) end
        end
      end
    end
  end
  if redis.call('HLEN', K_PEERS) == 0 then
    redis.call('DEL', K_PEERS, K_TOKENS, K_SEEN, K_SEQ)
    emptied = true
  end
end

-- Marks ids up to `id` delivered (clamped to the newest) and drops delivered messages beyond
-- the replay window.
local function acknowledge(peer, id, replay_window)
  local meta = k_meta(peer)
  local state = redis.call('HMGET', meta, 'last', 'first', 'delivered')
  local last, first, delivered = tonumber(state[1]), tonumber(state[2]), tonumber(state[3])
  if last == nil then return end
  if id > last then id = last end
  if id <= delivered then return end
  redis.call('HSET', meta, 'delivered', id)
  local drop = (id - replay_window) - first + 1
  if drop > 0 then
    redis.call('LTRIM', k_list(peer), drop, -1)
    redis.call('HSET', meta, 'first', first + drop)
  end
end

-- Publishes the wake-ups; with `refresh`, renews the expiry of the room's keys and of the
-- mailboxes in `touched`.
local function finish(refresh)
  for peer, _ in pairs(woken) do
    redis.call('PUBLISH', k_wake(peer), '1')
  end
  if not refresh then return end
  if not emptied then
    redis.call('PEXPIRE', K_PEERS, key_ttl_ms)
    redis.call('PEXPIRE', K_TOKENS, key_ttl_ms)
    redis.call('PEXPIRE', K_SEEN, key_ttl_ms)
    redis.call('PEXPIRE', K_SEQ, key_ttl_ms)
  end
  for peer, _ in pairs(touched) do
    redis.call('PEXPIRE', k_list(peer), key_ttl_ms)
    redis.call('PEXPIRE', k_meta(peer), key_ttl_ms)
  end
end

-- The departures as a flat reply: {peer, reason, client key, peer, reason, client key, ...}.
local function departures_reply()
  local flat = {}
  for _, d in ipairs(departures) do
    table.insert(flat, d[1])
    table.insert(flat, d[2])
    table.insert(flat, d[3])
  end
  return flat
end

-- The peer that `digest` belongs to, or an error reply's code.
local function identify(digest)
  if redis.call('EXISTS', K_PEERS) == 0 then return nil, 'room_not_found' end
  if digest == '' then return nil, 'missing_token' end
  local owner = redis.call('HGET', K_TOKENS, digest)
  if not owner then return nil, 'invalid_token' end
  return owner, nil
end

-- `peer`, if `digest` is its token's: the same precedence as the memory store.
local function authorize(peer, digest)
  if redis.call('EXISTS', K_PEERS) == 0 then return 'room_not_found' end
  if redis.call('HEXISTS', K_PEERS, peer) == 0 then return 'peer_not_found' end
  local owner, err = identify(digest)
  if err then return err end
  if owner ~= peer then return 'wrong_peer' end
  return nil
end
