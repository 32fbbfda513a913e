//! The key layout of the Redis store, from the configured prefix.
//!
//! Keys of one room share the `{room}` hash tag, so that a room script touches one hash slot;
//! the deployment-wide keys (the rooms, the sweep index, the per-address counts, the peer count,
//! the join buckets, the held bytes) share a tag of their own, `{<prefix>:global}`.
//! `lua/room.lua` derives the rest of a room's keys, and its wake-up channels, from its peers
//! hash the same way. In a Redis Cluster every room is on its room's slot and every
//! deployment-wide key on the one slot of `{<prefix>:global}`, so that no script touches two
//! slots (the held-bytes hash is then charged by the instance around the room scripts:
//! `scripts.rs`, "Held bytes in a Redis Cluster").

use crate::identity::{PeerId, RoomName};

/// Key names, from the configured prefix.
pub(super) struct Keys {
    prefix: String,
    /// Room name -> when it was created (µs): counts rooms for `max_rooms`.
    pub(super) rooms: String,
    /// Room name -> its earliest presence deadline (ms): what the sweepers look at.
    pub(super) due: String,
    /// Client key -> its live peers, for `max_peers_per_client`.
    pub(super) clients: String,
    /// Client key -> the rooms where it has peers, and `<client key> <room>` -> its peers
    /// there, for `max_rooms_per_client`.
    pub(super) client_rooms: String,
    /// The live peers of the deployment, for `/metrics`.
    pub(super) peer_count: String,
    /// Client address -> bytes its sends hold in mailboxes, and `*` -> bytes held in all of
    /// them: `client_max_held_bytes` and `max_held_bytes`, charged and released by the room
    /// scripts (`KEYS[2]` of each).
    pub(super) held: String,
    /// Written before each `WAIT` (`redis_wait_replicas`) on the wait connection, to bring that
    /// connection's replication offset up to the master's; expires after a minute.
    pub(super) wait_mark: String,
    /// In Sentinel mode, the master's config epoch, written by each instance when it connects
    /// to a master: the floor of a seal's generation (`lua/room.lua`, "Seal").
    pub(super) epoch: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            rooms: format!("{prefix}:{{{prefix}:global}}:rooms"),
            due: format!("{prefix}:{{{prefix}:global}}:due"),
            clients: format!("{prefix}:{{{prefix}:global}}:clients"),
            client_rooms: format!("{prefix}:{{{prefix}:global}}:client-rooms"),
            peer_count: format!("{prefix}:{{{prefix}:global}}:peer-count"),
            held: format!("{prefix}:{{{prefix}:global}}:held"),
            wait_mark: format!("{prefix}:{{{prefix}:global}}:wait-mark"),
            epoch: format!("{prefix}:{{{prefix}:global}}:epoch"),
        }
    }

    /// The join bucket of a client key (`lua/joins.lua`).
    pub(super) fn join_bucket(&self, client: &str) -> String {
        format!("{}:{{{}:global}}:join:{client}", self.prefix, self.prefix)
    }

    /// Key `suffix` (`peers`, `tokens`, …) of `room`: every key of a room carries its `{room}`
    /// hash tag (`lua/room.lua` lists them).
    pub(super) fn of_room(&self, room: &str, suffix: &str) -> String {
        format!("{}:{{{room}}}:{suffix}", self.prefix)
    }

    /// The room's peers hash, `KEYS[1]` of every room script; the others derive from it.
    pub(super) fn peers(&self, room: &RoomName) -> String {
        self.of_room(room.as_str(), "peers")
    }

    /// The channel that wakes `peer`'s readers, on its room's slot so that a Redis Cluster's
    /// sharded pub/sub keeps it on the shard that holds the mailbox (`lua/room.lua` names it the
    /// same way).
    pub(super) fn wake(&self, room: &RoomName, peer: PeerId) -> String {
        self.of_room(room.as_str(), &format!("w:{peer}"))
    }
}
