-- Shared by every script that touches one room: the top of the room library, whose functions
-- are those scripts (scripts.rs, "The room library"; `begin` below).
--
-- KEYS[1] is the room's peers hash, "<prefix>:{<room>}:peers". Every key of a room carries the
-- room's "{<room>}" hash tag; the other keys of the room are derived from KEYS[1] here rather
-- than passed, because which mailboxes a script touches is only known inside it (a join
-- announces itself to every peer).
-- KEYS[2] is the deployment-wide held-bytes hash, "<prefix>:{<prefix>:global}:held": client key
-- -> bytes its sends hold in mailboxes, and "*" -> bytes held in all mailboxes. It is charged
-- and released in the same script as the mailbox it counts (one round trip per send, and
-- nothing to undo if an instance dies in between).
-- In a Redis Cluster that would put a room script on two slots, so there KEYS[2] is not given:
-- the script then changes no held bytes itself but returns what it would have charged and
-- released (`held_reply`), and the instance applies it to the hash (scripts.rs, "Held bytes in
-- a Redis Cluster"); each script is then wrapped so that it answers {its reply, that list}.
-- The wake-ups are then published with SPUBLISH (sharded pub/sub, on the room's slot).
--
-- Keys of a room:
--   peers      hash  peer id -> "<join seq>\n<token digest>\n<client key>\n<name and meta JSON>"
--                    (client key: the address held to max_peers_per_client, or "")
--   tokens     hash  token digest (the first 128 bits of its SHA-256, hex) -> peer id
--   seen       zset  peer id -> presence deadline (ms): removed with reason timeout after it
--   seq        string, the last join sequence number (join order)
--   boxes      hash  peer id -> its mailbox state, "last,first,delivered,epoch,rt,ru,ub,db,pe,ck,gen,rid":
--                    the newest id, the id of the list's head (last + 1 when empty), ids up to
--                    `delivered` are delivered, `epoch` is bumped by each new live stream,
--                    `rt`/`ru` are the send-rate tokens and when they were counted (ms), `ub`/`db`
--                    the bytes of the undelivered / delivered messages held, `pe` is bumped by
--                    each new poll, `ck` is the peer's client key (as in its record: what its
--                    sends are charged to), `gen` the mailbox's generation ("" for 0) and
--                    `rid` the replication id (`master_replid`, its first 12 hex digits) of the
--                    server history that assigned its ids (see "Seal" below). One hash for
--                    the room rather than a key per peer: a key costs Redis more than a field.
--   m:<peer>   list  the peer's stored messages, "<type> <envelope without id>", oldest first
--   s:<peer>   list  beside m:<peer>, entry for entry: "<size> <client key>", the envelope's bytes
--                    and the address they are charged to ("" for none), so that trimming and
--                    reading in bytes never copy the messages themselves
--   i:<peer>   hash  the peer's sends under an Idempotency-Key within the window (send.lua):
--                    key -> "<batch fingerprint> <accepted>"; at most idempotency_keys_per_peer
--   it:<peer>  zset  beside i:<peer>: key -> when it is forgotten (ms). Both expire with their
--                    newest entry, and go with the peer
-- Beside KEYS[2], "<prefix>:{<prefix>:global}:epoch" (K_EPOCH) is the Sentinel config epoch of
-- the master, written by the instances (`generation_floor`, "Seal"); absent on one Redis.
-- Channel "<prefix>:{<room>}:w:<peer>" wakes the peer's readers: "1", an open's "o<nonce>", or
-- the messages just appended ("m...", `carried_payload`), which a reader may answer from
-- (carried.rs) but only ever relies on as far as the mailbox is the truth. It has the room's
-- hash tag, so that in a Redis Cluster it is a sharded channel of the room's slot, published
-- and heard on the shard that holds the mailbox.

-- This file is the top of a library of Redis functions (scripts.rs, "The room library"): it
-- runs once, when the library is loaded, and each function then calls `begin` with its keys
-- and arguments, which sets every per-call value below (marked "per call"): a call pays for
-- the function it runs, not for defining these. Redis runs one call at a time.
local KEYS, ARGV -- per call
local base, K_PEERS, K_TOKENS, K_SEEN, K_SEQ, K_BOXES -- per call, from KEYS[1]
local K_HELD -- per call: KEYS[2]
-- A Redis Cluster's build: no held-bytes hash here, sharded wake-ups. Per call.
local CLUSTER
local function k_sends(peer) return base .. 'i:' .. peer end
local function k_send_expiry(peer) return base .. 'it:' .. peer end

-- Text to number and back, for the fields of mailbox states and the arguments that every call
-- parses and writes: Lua's `tonumber` is C's strtod (about 1,600 of Redis's instructions a
-- call) and `string.format('%d')` is sprintf (about 2,400), yet most of what they see repeats
-- (the limits, small counts, epochs, sizes). So each answer is remembered, in tables of the
-- library's own that outlive calls (pure mappings: nothing a call could see changes), each
-- emptied when it reaches MEMO_ENTRIES so that ever-new ids and times cannot grow it.
local MEMO_ENTRIES = 4096
local number_of, numbers = {}, 0
local function num(text)
  local n = number_of[text]
  if n ~= nil then return n end
  n = tonumber(text)
  if n ~= nil then
    if numbers >= MEMO_ENTRIES then number_of, numbers = {}, 0 end
    number_of[text], numbers = n, numbers + 1
  end
  return n
end

-- Key names, made once rather than at every call: each string the interpreter makes costs Redis
-- about a thousand instructions, and a call used to make five for its room's keys and one or
-- more for each mailbox it touched. A room's names (`names_for`) and its peers' (`peer_names`)
-- are remembered in the library's state, MEMO_ENTRIES of them in all, then forgotten together.
local names_of, named = {}, 0
local NAMES -- per call: the call's room's names
local function names_for(peers_key)
  local names = names_of[peers_key]
  if names then return names end
  if named >= MEMO_ENTRIES then names_of, named = {}, 0 end
  local room_base = string.sub(peers_key, 1, #peers_key - 5) -- strip "peers"
  names = {base = room_base, tokens = room_base .. 'tokens', seen = room_base .. 'seen',
           seq = room_base .. 'seq', boxes = room_base .. 'boxes', peers = {}}
  names_of[peers_key], named = names, named + 1
  return names
end

-- The names of `peer`'s keys in the call's room: {messages list, sizes list, wake-up channel}.
local function peer_names(peer)
  local of = NAMES.peers[peer]
  if of then return of end
  if named >= MEMO_ENTRIES then
    -- Forgotten with every other name; this call's room keeps its own until the call ends.
    names_of, named = {}, 0
  end
  of = {base .. 'm:' .. peer, base .. 's:' .. peer, base .. 'w:' .. peer}
  NAMES.peers[peer], named = of, named + 1
  return of
end
local function k_list(peer) return peer_names(peer)[1] end
local function k_sizes(peer) return peer_names(peer)[2] end
local function k_wake(peer) return peer_names(peer)[3] end

-- The epoch key beside a held-bytes hash ("<...>held" -> "<...>epoch").
local epoch_of = {}
local function epoch_key(held_key)
  local key = epoch_of[held_key]
  if key then return key end
  key = string.sub(held_key, 1, #held_key - 4) .. 'epoch' -- strip "held"
  if next(epoch_of) ~= nil then epoch_of = {} end -- one hash per deployment: keep one
  epoch_of[held_key] = key
  return key
end

local text_of, texts = {}, 0
local function fmt(n)
  local text = text_of[n]
  if text then return text end
  if n == math.floor(n) then text = string.format('%d', n) else text = tostring(n) end
  if n == n then -- not NaN, which no table takes as a key
    if texts >= MEMO_ENTRIES then text_of, texts = {}, 0 end
    text_of[n], texts = text, texts + 1
  end
  return text
end

-- Mailbox states this script has read, and those it changed: a batch of 16 messages to one
-- peer reads and writes its state once, not 16 times. `flush` writes the changed ones back.
local boxes, dirty -- per call: {}, {}

-- A mailbox state as stored, as a table.
local function parse_box(packed)
  local last, first, delivered, epoch, rt, ru, ub, db, pe, ck, gen, rid = string.match(packed,
    '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),?([^,]*),?([^,]*),?([^,]*),?([^,]*),?([^,]*),?(.*)$')
  -- A state written before the byte bounds has no `ub`, `db`, `pe`, `ck`: 0, and no address.
  -- One written before the seal has no `gen` and `rid` (""): it is adopted by the first server
  -- that assigns it an id (`seal_if_moved`), as a rolling upgrade must not reset every reader.
  return {last = num(last), first = num(first), delivered = num(delivered),
          epoch = num(epoch), rt = num(rt), ru = num(ru),
          ub = num(ub) or 0, db = num(db) or 0, pe = num(pe) or 0, ck = ck,
          gen = num(gen) or 0, rid = rid}
end

-- A peer's mailbox state, or nil when it has none.
local function load(peer)
  local box = boxes[peer]
  if box then return box end
  local packed = redis.call('HGET', K_BOXES, peer)
  if not packed then return nil end
  box = parse_box(packed)
  boxes[peer] = box
  return box
end

-- Reads the states of `peers` (a list, which may repeat) in one command, for the `load`s that
-- follow: a send's sender and recipient cost one HMGET instead of two HGETs.
local function preload(peers)
  local wanted, seen = {}, {}
  for _, peer in ipairs(peers) do
    if boxes[peer] == nil and not seen[peer] then
      seen[peer] = true
      table.insert(wanted, peer)
    end
  end
  if #wanted < 2 then return end
  local packed = redis.call('HMGET', K_BOXES, unpack(wanted))
  for index, peer in ipairs(wanted) do
    if packed[index] then boxes[peer] = parse_box(packed[index]) end
  end
end

local function save(peer, box)
  boxes[peer] = box
  dirty[peer] = true
end

-- How long keys live after their last refresh (ms); set by each script from its arguments.
-- Every key gets it when created; joins and presence refreshes renew the room's and the
-- listening peers' keys, so keys outlive their peers but not the instances looking after them.
local key_ttl_ms -- per call: 0

-- Bytes this script charged (+) or released (-), by client key ("" for none): written to
-- K_HELD once, by `flush`, however many messages moved.
local held -- per call: {}
local function charge(client, bytes)
  held[client] = (held[client] or 0) + bytes
end

-- Adds `delta` to a field of K_HELD and returns the new count; a count that reaches 0 (or
-- below, after K_HELD expired while bytes were held) is removed, so that a release never
-- leaves a debt behind.
local function add_held(field, delta)
  local count = redis.call('HINCRBY', K_HELD, field, delta)
  if count <= 0 then redis.call('HDEL', K_HELD, field) end
  return count
end

-- In a Redis Cluster, what `flush` would have added to K_HELD, by client key: the instance
-- applies it (`held_reply`).
local held_out -- per call: {}

-- Writes the changed mailbox states and the held bytes back; every script that saves calls it
-- before returning.
local function flush()
  local changed = {}
  for peer, _ in pairs(dirty) do
    local box = boxes[peer]
    table.insert(changed, peer)
    table.insert(changed, fmt(box.last) .. ',' .. fmt(box.first) .. ',' ..
      fmt(box.delivered) .. ',' .. fmt(box.epoch) .. ',' .. fmt(box.rt) .. ',' .. fmt(box.ru) ..
      ',' .. fmt(box.ub) .. ',' .. fmt(box.db) .. ',' .. fmt(box.pe) .. ',' .. box.ck .. ',' ..
      (box.gen > 0 and fmt(box.gen) or '') .. ',' .. box.rid)
  end
  -- Every changed state in one command.
  if #changed > 0 then redis.call('HSET', K_BOXES, unpack(changed)) end
  dirty = {}
  if CLUSTER then
    for client, delta in pairs(held) do
      held_out[client] = (held_out[client] or 0) + delta
    end
    held = {}
    return
  end
  local total = 0
  for client, delta in pairs(held) do
    if delta ~= 0 then
      total = total + delta
      if client ~= '' then add_held(client, delta) end
    end
  end
  -- A total that starts from nothing may be a new K_HELD, which needs its expiry; presence
  -- refreshes (touch.lua) renew it from then on, as they do the mailboxes it counts.
  if total ~= 0 and add_held('*', total) == total and key_ttl_ms > 0 then
    redis.call('PEXPIRE', K_HELD, key_ttl_ms)
  end
  held = {}
end
-- Wakes `peer`'s readers; `payload` ("1" by default) says nothing they rely on, but an open's
-- ("o<nonce>", open.lua) is not a wake-up for the reader that opened, and carried messages
-- (`carried_payload`) spare a reader a read.
local function wake_up(peer, payload)
  redis.call(CLUSTER and 'SPUBLISH' or 'PUBLISH', k_wake(peer), payload or '1')
end

-- The most bytes of stored values a wake-up carries (carried.rs, CARRIED_MAX_BYTES).
local CARRIED_MAX_BYTES = 16384

-- The wake-up that carries the messages a call appended to a mailbox, {first id, value, ...}:
-- "m<first id>,<bytes>:<value>,<bytes>:<value>..." (carried.rs), or nil (a plain wake-up) past
-- CARRIED_MAX_BYTES. A reader woken by it answers from it instead of reading.
local function carried_payload(carried)
  if #carried == 2 then -- one message, the common case: one string made
    local value = carried[2]
    if #value > CARRIED_MAX_BYTES then return nil end
    return 'm' .. fmt(carried[1]) .. ',' .. fmt(#value) .. ':' .. value
  end
  local parts, bytes = {'m', fmt(carried[1])}, 0
  for index = 2, #carried do
    local value = carried[index]
    bytes = bytes + #value
    if bytes > CARRIED_MAX_BYTES then return nil end
    table.insert(parts, ',' .. fmt(#value) .. ':')
    table.insert(parts, value)
  end
  return table.concat(parts)
end

-- The held bytes a Redis Cluster's build returns beside its reply: {client key, delta, ...},
-- what was flushed and what was charged after (a refusal returns before its flush).
local function held_reply()
  for client, delta in pairs(held) do
    held_out[client] = (held_out[client] or 0) + delta
  end
  local flat = {}
  for client, delta in pairs(held_out) do
    if delta ~= 0 then
      table.insert(flat, client)
      table.insert(flat, delta)
    end
  end
  return flat
end

-- Redis's clock, asked once per call: every time a call reads is the same instant.
local clock -- per call: nil
local function time()
  if not clock then clock = redis.call('TIME') end
  return clock
end

local function now_ms()
  local t = time()
  return num(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = time()
  return num(t[1]) * 1000000 + tonumber(t[2])
end

-- Expiry. Every script that creates a key gives it its expiry at once: a join the room's keys
-- (`finish('always')`), `push` a mailbox's new lists. Presence refreshes (authorize.lua at each
-- poll and stream, touch.lua) then only extend them, and need not while this server gave them
-- most of their expiry a moment ago: `expiry_of` remembers, by the room's peers hash and by
-- mailbox, when the expiry this server last set runs out, and a refresh is skipped while
-- more than three quarters of key_ttl_ms are left. Seven PEXPIREs at every poll were a third
-- of a poll's cost on Redis. Kept in the library's state, like `kept_rid`: a promoted replica
-- and a restarted server start without it and refresh. Emptied at MEMO_ENTRIES.
local expiry_of, expiries = {}, 0
local function expiry_needed(key, always)
  local now = now_ms()
  if not always then
    local known = expiry_of[key]
    if known and known - now > key_ttl_ms * 0.75 then return false end
  end
  if expiry_of[key] == nil then
    if expiries >= MEMO_ENTRIES then expiry_of, expiries = {}, 0 end
    expiries = expiries + 1
  end
  expiry_of[key] = now + key_ttl_ms
  return true
end

-- Gives the room's keys their expiry; unless `always`, only when they need it.
local function expire_room(always)
  if not expiry_needed(K_PEERS, always) then return end
  redis.call('PEXPIRE', K_PEERS, key_ttl_ms)
  redis.call('PEXPIRE', K_TOKENS, key_ttl_ms)
  redis.call('PEXPIRE', K_SEEN, key_ttl_ms)
  redis.call('PEXPIRE', K_SEQ, key_ttl_ms)
  redis.call('PEXPIRE', K_BOXES, key_ttl_ms)
end

-- Gives `peer`'s mailbox lists their expiry; unless `always`, only when they need it.
local function expire_lists(peer, always)
  local list = k_list(peer)
  if not expiry_needed(list, always) then return end
  redis.call('PEXPIRE', list, key_ttl_ms)
  redis.call('PEXPIRE', k_sizes(peer), key_ttl_ms)
end

-- Peers whose readers must look again, and mailboxes whose expiry must be refreshed. A woken
-- peer maps to true when only a read can tell what changed (a seal, its removal), and otherwise
-- to the messages this call appended to its mailbox, {first id, value, ...}, which its wake-up
-- carries (`carried_payload`).
local woken, touched -- per call: {}, {}
-- The undelivered messages and bytes a mailbox may hold (mailbox_capacity,
-- mailbox_max_bytes); set by each script that pushes, from its arguments.
local capacity, max_bytes -- per call: 0, 0

-- The bytes a stored value "<type> <envelope>" holds: its envelope's.
local function size_of(value)
  return #value - string.find(value, ' ', 1, true)
end

-- "<size> <client key>" of a sizes list entry, as (size, client key).
local function parse_size(item)
  local space = string.find(item, ' ', 1, true)
  return num(string.sub(item, 1, space - 1)), string.sub(item, space + 1)
end

-- Seal. Redis replicates asynchronously: a replica promoted by a failover may lack the last
-- writes its old master acknowledged, and ids it assigned next would meet ids that readers saw
-- (reused ids, silent gaps). So each mailbox records the replication id (`master_replid`) of
-- the server history that assigns its ids (`rid`; a promoted replica, like a server restarted,
-- has a new one), and the first script that would assign it an id (`push`), open a reader
-- (open.lua) or answer a reader ahead of it (read.lua) on a server with another id seals it:
-- a new generation `gen`, its ids continuing from gen * 2^32 + 1, its held messages dropped
-- (lost ones may have been interleaved after them), and every reader whose cursor is of an
-- older generation told `lost` (read.lua). Spurious seals (a failover that lost nothing, a
-- slot migrated to another node) cost one `lost` reset; a missed one would be silent.
-- Ids stay integers below 2^53 (exact in Lua's numbers and in JSON) while gen < 2^21.
local GENERATION = 4294967296 -- 2^32 ids per generation

-- This server's replication id, asked only by the scripts that may seal, once per call.
-- `INFO replication` costs Redis about 4 µs, a tenth of a relayed message, so its answer is
-- kept for RID_TTL_MS in the library's own state (`kept_rid`), which lives in this server's
-- Lua state only: a promoted replica (whose library never ran a call) and a restarted server
-- start without it and ask INFO. A master demoted and promoted again within RID_TTL_MS would
-- trust its old id until then. (Before, a room key written without replication kept it, at a
-- GET per call.) benches/seal_scripts.py measures the cost.
local RID_TTL_MS = 1000
local current_rid -- per call: nil
local kept_rid, kept_rid_until = nil, 0
local function server_rid()
  if current_rid then return current_rid end
  local now = now_ms()
  if kept_rid and now < kept_rid_until then
    current_rid = kept_rid
    return current_rid
  end
  -- The first 12 of its 40 hex digits: two histories share them once in 2^48, and a box
  -- state that stays under 64 bytes is kept by Redis in its compact encoding.
  current_rid = string.sub(
    string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '', 1, 12)
  kept_rid, kept_rid_until = current_rid, now + RID_TTL_MS
  return current_rid
end

-- The least generation a seal may take, from the epoch of the master this script runs on:
-- EPOCH_GENERATIONS times its `cluster_my_epoch` in a Redis Cluster, or its Sentinel
-- `config-epoch`, which every instance writes to K_EPOCH when it connects to a master
-- (connection.rs, `Follower::connect`), before any script runs through it; 0 on one Redis.
-- An epoch only grows across promotions (and, in a cluster, slot imports), and a node that
-- takes a mailbox over has the greatest one: so each epoch owns the generations from
-- epoch * EPOCH_GENERATIONS on, and two failovers within one replication lag (A -> B -> C, B's
-- seal never reaching C) seal a mailbox to generations of two different epochs, never to the
-- same one, however many seals it had before (with gen + 1 alone, both would take gen + 1).
-- The ranges stay apart while a mailbox is sealed fewer than EPOCH_GENERATIONS times within
-- one epoch (restarts of one master between failovers), and ids stay below 2^53 while epochs
-- stay below 2^21 / EPOCH_GENERATIONS = 32,768.
local EPOCH_GENERATIONS = 64
local K_EPOCH -- per call: beside K_HELD
local function generation_floor()
  local epoch
  if CLUSTER then
    epoch = string.match(redis.call('CLUSTER', 'INFO'), 'cluster_my_epoch:(%d+)')
  else
    epoch = redis.call('GET', K_EPOCH)
  end
  return (num(epoch) or 0) * EPOCH_GENERATIONS
end

-- Seals `peer`'s mailbox if this server is not the history that assigned its ids; a state from
-- before the seal (no `rid`) is adopted instead. Returns whether it sealed.
local function seal_if_moved(peer, box)
  local rid = server_rid()
  if box.rid == rid then return false end
  if box.rid == '' then
    box.rid = rid
    save(peer, box)
    return false
  end
  for _, item in ipairs(redis.call('LRANGE', k_sizes(peer), 0, -1)) do
    local size, client = parse_size(item)
    charge(client, -size)
  end
  redis.call('DEL', k_list(peer), k_sizes(peer))
  box.gen = math.max(box.gen + 1, generation_floor(), math.floor(box.last / GENERATION) + 1)
  box.rid = rid
  box.last = box.gen * GENERATION
  box.first, box.delivered = box.last + 1, box.last
  box.ub, box.db = 0, 0
  save(peer, box)
  woken[peer] = true
  return true
end

-- Appends `value` (`size` bytes, charged to `client`) under the mailbox's next id, unless
-- `capacity` messages are undelivered or it would take the undelivered bytes past `max_bytes`.
local function push(peer, value, size, client)
  local box = load(peer)
  if box == nil then
    return false -- a peer without mailbox state (lost to eviction by Redis): remove it
  end
  seal_if_moved(peer, box)
  if box.last - box.delivered >= capacity or box.ub + size > max_bytes then
    return false
  end
  local new_list = redis.call('RPUSH', k_list(peer), value) == 1
  -- (A mailbox from before the byte bounds has a message list and no sizes list.)
  local new_sizes = redis.call('RPUSH', k_sizes(peer), size .. ' ' .. client) == 1
  if new_list or new_sizes then
    -- A list that was empty did not exist: the new one needs its expiry.
    expire_lists(peer, true)
  end
  box.last = box.last + 1
  box.ub = box.ub + size
  charge(client, size)
  save(peer, box)
  -- One call's appends to a mailbox have consecutive ids (nothing else runs meanwhile).
  local carried = woken[peer]
  if carried == nil then
    woken[peer] = {box.last, value}
  elseif carried ~= true then
    table.insert(carried, value)
  end
  return true
end

-- Releases the bytes `peer`'s mailbox holds and deletes it.
local function drop_mailbox(peer)
  for _, item in ipairs(redis.call('LRANGE', k_sizes(peer), 0, -1)) do
    local size, client = parse_size(item)
    charge(client, -size)
  end
  redis.call('DEL', k_list(peer), k_sizes(peer))
end

-- Removes `peer` with `reason` and tells the others; a `leave` that overflows another mailbox
-- evicts that peer too, and so on. Appends each departure to `departures` as
-- {peer, reason, client key}.
-- Returns nothing; `emptied` is set once the last peer went (and the room's keys are gone).
local departures, emptied -- per call: {}, false
local function remove(peer, reason)
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
      drop_mailbox(gone)
      redis.call('DEL', k_sends(gone), k_send_expiry(gone))
      redis.call('HDEL', K_BOXES, gone)
      boxes[gone], dirty[gone] = nil, nil
      touched[gone] = nil
      woken[gone] = true
      table.insert(departures, {gone, why, client})
      local event = 'leave {"type":"leave","data":{"peer_id":"' .. gone .. '","reason":"' .. why .. '"}}'
      local event_size = size_of(event)
      for _, other in ipairs(redis.call('HKEYS', K_PEERS)) do
        if not push(other, event, event_size, '') then
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
    redis.call('DEL', K_PEERS, K_TOKENS, K_SEEN, K_SEQ, K_BOXES)
    emptied = true
  end
end

-- Marks ids up to `id` delivered (clamped to the newest) and drops the oldest delivered
-- messages beyond the replay window: past `replay_window` messages or `replay_bytes` bytes.
-- Reads only the sizes of the messages that moved, never the messages.
local function acknowledge(peer, id, replay_window, replay_bytes)
  local box = load(peer)
  if box == nil then return end
  if id > box.last then id = box.last end
  if id <= box.delivered then return end
  local sizes = k_sizes(peer)
  -- Acknowledging everything (what a reader that keeps up does) moves every undelivered byte.
  local moved = box.ub
  if id < box.last then
    moved = 0
    for _, item in ipairs(redis.call('LRANGE', sizes, box.delivered + 1 - box.first, id - box.first)) do
      moved = moved + parse_size(item)
    end
  end
  box.ub, box.db = math.max(box.ub - moved, 0), box.db + moved
  box.delivered = id
  -- Delivered messages held, and how many of them the count alone drops.
  local held_count = id - box.first + 1
  local excess = held_count - replay_window
  local drop = 0
  while drop < held_count and (drop < excess or box.db > replay_bytes) do
    local want = excess - drop
    if want < 16 then want = 16 end
    local chunk = redis.call('LRANGE', sizes, drop, math.min(drop + want, held_count) - 1)
    if #chunk == 0 then break end
    for _, item in ipairs(chunk) do
      if not (drop < excess or box.db > replay_bytes) then break end
      local size, client = parse_size(item)
      charge(client, -size)
      box.db = box.db - size
      drop = drop + 1
    end
  end
  -- Messages stored before the byte bounds have no sizes: the count still trims them.
  if drop < excess then drop = excess end
  if box.db < 0 then box.db = 0 end
  if drop > 0 then
    redis.call('LTRIM', k_list(peer), drop, -1)
    redis.call('LTRIM', sizes, drop, -1)
    box.first = box.first + drop
  end
  save(peer, box)
end

-- Publishes the wake-ups; with `refresh`, renews the expiry of the room's keys and of the
-- mailboxes in `touched`: 'always' (a join, which may have created them) or 'extend' (a presence
-- refresh, which skips what was renewed a moment ago: "Expiry").
local function finish(refresh)
  flush()
  for peer, carried in pairs(woken) do
    wake_up(peer, carried ~= true and carried_payload(carried) or nil)
  end
  if not refresh then return end
  local always = refresh == 'always'
  if not emptied then expire_room(always) end
  for peer, _ in pairs(touched) do
    expire_lists(peer, always)
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

-- The peer that `digest` belongs to, or an error reply's code. A token the room knows is the
-- common case and answers in one command (the tokens hash goes with the room: a token in it
-- means the room is there); the others are told apart in the memory store's order.
local function identify(digest)
  local owner = digest ~= '' and redis.call('HGET', K_TOKENS, digest)
  if owner then return owner, nil end
  if redis.call('EXISTS', K_PEERS) == 0 then return nil, 'room_not_found' end
  if digest == '' then return nil, 'missing_token' end
  return nil, 'invalid_token'
end

-- `peer`, if `digest` is its token's: the same precedence as the memory store. The token of
-- the peer named (the common case) answers in one command, as in `identify`.
local function authorize(peer, digest)
  if digest ~= '' and redis.call('HGET', K_TOKENS, digest) == peer then return nil end
  if redis.call('EXISTS', K_PEERS) == 0 then return 'room_not_found' end
  if redis.call('HEXISTS', K_PEERS, peer) == 0 then return 'peer_not_found' end
  local owner, err = identify(digest)
  if err then return err end
  if owner ~= peer then return 'wrong_peer' end
  return nil
end

-- Sets every per-call value above for a call with `keys` and `args`: the first thing each
-- function of the library does.
local function begin(keys, args)
  KEYS, ARGV = keys, args
  K_PEERS = keys[1]
  NAMES = names_for(K_PEERS)
  base = NAMES.base
  K_TOKENS, K_SEEN, K_SEQ, K_BOXES = NAMES.tokens, NAMES.seen, NAMES.seq, NAMES.boxes
  K_HELD = keys[2]
  CLUSTER = K_HELD == nil
  K_EPOCH = K_HELD and epoch_key(K_HELD)
  boxes, dirty, held, held_out, woken, touched, departures = {}, {}, {}, {}, {}, {}, {}
  key_ttl_ms, capacity, max_bytes, current_rid, emptied, clock = 0, 0, 0, nil, false, nil
end
