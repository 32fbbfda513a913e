//! The Redis store: rooms in a shared Redis, so that several signpost instances behave, to any
//! client, as one server.
//!
//! Every atomic step is a Lua script of its own in `lua/` (join, leave, send, read, …), each
//! with a header saying its keys, arguments and reply; `lua/room.lua` holds what the room
//! scripts share (the key layout, appending to a mailbox, removing a peer and its cascade of
//! evictions); with it the room scripts are one library of Redis functions (`scripts.rs`, "The
//! room library"), loaded once and called with `FCALL`. A send is one round trip: the script identifies the
//! sender by its token's digest, checks the recipients and the rate, assigns every recipient
//! its mailbox's next id, appends, and publishes a wake-up, all at once.
//!
//! The stored mailbox is the truth; pub/sub only wakes readers ([`wakeups`]), who subscribe
//! before they read and read by id, so a lost wake-up delays a message but never loses it.
//! Presence: while an instance holds a stream or a poll for a peer it refreshes the peer's
//! deadline ([`presence`]); every instance sweeps rooms whose earliest deadline has passed, and
//! because the sweep of a room is one script, each peer leaves once.
//!
//! Keys of one room share the `{room}` hash tag; the deployment-wide keys (the rooms, the sweep
//! index, the per-address counts, the peer count, the join buckets, the held bytes) share a tag
//! of their own. The room scripts touch their room's keys and the held-bytes hash; the other
//! deployment-wide keys are written by separate scripts. So every per-address limit holds across
//! instances: a join is charged to its address's bucket and admitted against `max_rooms` and the
//! per-address counts in one step (`reserve.lua`), then joins its room (`join.lua`); a refusal
//! after the admission gives back what it counted. (A join refused before it reaches the store
//! is charged by `joins.lua`.) `/metrics` reads two of these keys, whatever the number of rooms.
//! Every key expires unless refreshed, so instances that crash leave nothing behind for long.
//!
//! Bytes: each stored message has its size and the client key it is charged to beside it (a
//! `s:<peer>` list parallel to the mailbox's), and each mailbox state counts its undelivered and
//! delivered bytes, so that `mailbox_max_bytes`, the replay window's bytes and a read's byte
//! budget are decided without copying a message. The bytes held per address and in total live
//! in one deployment-wide hash, charged by the script that appends and released by the one that
//! trims or removes, in the same step: nothing to undo if an instance dies in between. In a
//! Redis Cluster that hash is on another slot than the room's, so there the instance charges a
//! send before its script and applies what each room script answers it charged and released
//! (`scripts.rs`, "Held bytes in a Redis Cluster").
//!
//! In a Redis Cluster (`redis_cluster_nodes`) each room's keys and wake-up channels are on its
//! room's slot and the deployment-wide keys on one slot of their own, so that no script touches
//! two slots; wake-ups use sharded pub/sub (`wakeups.rs`).
//!
//! With the `redis-tls` feature, a `rediss://` URL connects over TLS (`tls.rs`): both
//! connections are made from one client that carries the TLS settings.
//!
//! # Layout
//! - `connection.rs`: the way to Redis that everything below calls through (one Redis, the
//!   master that Redis Sentinel names, followed across failovers, or a Redis Cluster), and how a
//!   failure becomes `503 store_unavailable`.
//! - `keys.rs`: the key layout and its hash tags.
//! - `scripts.rs`: the Lua scripts, one typed call per script with a typed reply.
//! - `records.rs`: how a peer and a message are kept (the token's digest, the peer record).
//! - `reader.rs`: [`Reader`], a peer's mailbox for its stream or poll.
//! - `wakeups.rs`: pub/sub wake-ups; `carried.rs`: the messages they carry, which spare a
//!   woken reader its read; `presence.rs`: presence refreshes while a peer listens.
//! - This file: [`RedisStore`], the store's operations, each a few calls to the above.

mod carried;
mod connection;
mod keys;
mod presence;
mod reader;
mod records;
mod scripts;
mod seam;
#[cfg(feature = "redis-tls")]
mod tls;
mod wakeups;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use redis::Value;

use crate::client_limits::ClientRefusal;
use crate::error::{ApiResult, Error};
use crate::idempotency::IdempotencyKey;
use crate::identity::{PeerId, RoomName};
use crate::message::EncodedMessage;
use crate::metrics::Metrics;
use crate::store::{Departure, JoinOutcome, Limits, NewPeer, Outgoing, PeerInfo, Sent};

use self::connection::Connection;
use self::keys::Keys;
use self::records::{digest, parse_record};
use self::scripts::{Admission, JoinAnswer, Scripts};

pub use self::connection::{Target, WaitReplicas};
pub use self::presence::Listening;
pub use self::reader::Reader;
pub use self::wakeups::Subscription;

/// A cheap handle: the store's state is shared with its readers and background tasks.
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    scripts: Scripts,
    keys: Keys,
    limits: Limits,
    /// Room keys expire this long after their last write or presence refresh: longer than any
    /// peer may stay silent, so only rooms that no live instance looks after expire.
    key_ttl_ms: u64,
    wakeups: wakeups::Wakeups,
    presence: presence::Presence,
    metrics: Metrics,
    /// In a Redis Cluster, the client key of each token digest that sent through this instance
    /// (`scripts::sender_client`); a `parking_lot::Mutex`, held for a lookup or an insert, never
    /// across `.await`.
    senders: parking_lot::Mutex<std::collections::HashMap<String, String>>,
}

impl RedisStore {
    /// A store on `target` (one Redis, the master that sentinels name, or a Redis Cluster), over TLS for
    /// `rediss://` with `tls_ca_file`'s CAs if given; connects lazily, so this succeeds while
    /// Redis is down.
    pub fn new(
        target: &Target,
        tls_ca_file: Option<&Path>,
        wait: Option<WaitReplicas>,
        prefix: &str,
        limits: Limits,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let keys = Keys::new(prefix);
        let connection = Connection::open(target, tls_ca_file, wait, &keys.epoch, metrics.clone())?;
        let timeout_ms = limits.peer_timeout.as_millis() as u64;
        let inner = Arc::new(Inner {
            connection,
            scripts: Scripts::new(matches!(target, Target::Cluster { .. })),
            keys,
            key_ttl_ms: (timeout_ms * 3).max(60_000),
            limits,
            wakeups: wakeups::Wakeups::new(),
            presence: presence::Presence::new(),
            metrics,
            senders: Default::default(),
        });
        Ok(Self { inner })
    }

    /// Starts the wake-up connection, the presence refresher and (Sentinel) the master's
    /// watcher; all end with `shutdown`.
    pub fn start(&self, shutdown: rocket::Shutdown) {
        self.inner.connection.start(shutdown.clone());
        wakeups::spawn(Arc::clone(&self.inner), shutdown.clone());
        presence::spawn(Arc::clone(&self.inner), shutdown);
    }

    pub async fn ready(&self) -> ApiResult<()> {
        let _: Value = self.inner.connection.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Charges a join that is refused before it reaches [`join`](Self::join), which charges
    /// the others itself.
    pub async fn charge_join(&self, client: IpAddr) -> ApiResult<()> {
        match scripts::charge_join(&self.inner, &client.to_string()).await? {
            Some(retry_after) => Err(Error::TooManyJoins { retry_after }),
            None => Ok(()),
        }
    }

    /// Admits the join on the deployment-wide keys, then joins the room; checked in the order
    /// [`NewPeer`] states, and a refusal gives back whatever the admission counted.
    pub async fn join(
        &self,
        room: &RoomName,
        peer: NewPeer,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome> {
        let inner = &self.inner;
        let limits = &inner.limits;
        let client = peer.client.map(|client| client.to_string());
        let refusal = match scripts::reserve(inner, room, client.as_deref()).await? {
            Admission::Admitted { reserved_us } => Ok(reserved_us),
            // The first check of all: answered as it is.
            Admission::TooManyJoins { retry_after } => {
                return Err(Error::TooManyJoins { retry_after })
            }
            Admission::TooManyRooms => Err(Error::TooManyRooms {
                limit: limits.max_rooms,
            }),
            Admission::TooManyPeersForClient => Err(limits.client_refusal(ClientRefusal::Peers)),
            Admission::TooManyRoomsForClient => Err(limits.client_refusal(ClientRefusal::Rooms)),
        };
        let reserved_us = match refusal {
            Ok(reserved_us) => reserved_us,
            // The room's own checks come first: the same answer as the memory store's.
            Err(refusal) => {
                return Err(self
                    .room_refusal(room, peer.info.peer_id)
                    .await?
                    .unwrap_or(refusal))
            }
        };
        let joined = self
            .join_room(room, peer, client.as_deref(), announcement)
            .await;
        if joined.is_err() {
            // Best effort: the join's own error is the answer. Counts left behind by a failure
            // here expire with the keys; a reservation, with the sweep.
            let released =
                scripts::release_clients(inner, room, &[client.unwrap_or_default()]).await;
            if released.is_ok() && reserved_us > 0 {
                let _ = scripts::release(inner, room, reserved_us).await;
            }
        }
        joined
    }

    /// What the join script would refuse a join of `peer` to `room` with, looked at before the
    /// admission's refusal is answered: `peer_present`, then `room_full`.
    async fn room_refusal(&self, room: &RoomName, peer: PeerId) -> ApiResult<Option<Error>> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.hexists(inner.keys.peers(room), peer.to_string());
        pipe.hlen(inner.keys.peers(room));
        let (present, peers): (bool, usize) = inner.connection.query_pipe(&pipe).await?;
        Ok(if present {
            Some(Error::PeerPresent)
        } else if peers >= inner.limits.max_peers_per_room {
            Some(Error::RoomFull {
                limit: inner.limits.max_peers_per_room,
            })
        } else {
            None
        })
    }

    /// The join script on a join admitted, then the new room recorded if it created one.
    async fn join_room(
        &self,
        room: &RoomName,
        peer: NewPeer,
        client: Option<&str>,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome> {
        let inner = &self.inner;
        let joined = match scripts::join(inner, room, &peer, client, &announcement).await? {
            JoinAnswer::Joined(joined) => joined,
            JoinAnswer::PeerPresent => return Err(Error::PeerPresent),
            JoinAnswer::RoomFull => {
                return Err(Error::RoomFull {
                    limit: inner.limits.max_peers_per_room,
                })
            }
        };
        inner.departed(room, &joined.departures).await?;
        if let Some(created) = &joined.created {
            scripts::created(inner, room, created).await?;
        }
        if let Some(emptied_us) = joined.emptied_us {
            // As a leave that empties its room: forgotten at once, not held until a sweep.
            scripts::release(inner, room, emptied_us).await?;
        }
        Ok(JoinOutcome {
            peers: joined.peers,
            departures: joined.departures,
        })
    }

    pub async fn leave(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Vec<Departure>> {
        let inner = &self.inner;
        let left = scripts::leave(inner, room, peer, token).await?;
        inner.departed(room, &left.departures).await?;
        if let Some(emptied_us) = left.emptied_us {
            scripts::release(inner, room, emptied_us).await?;
        }
        Ok(left.departures)
    }

    pub async fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.exists(inner.keys.peers(room));
        pipe.hget(
            inner.keys.of_room(room.as_str(), "tokens"),
            token.map(digest).unwrap_or_default(),
        );
        let (exists, owner): (bool, Option<String>) = inner.connection.query_pipe(&pipe).await?;
        if !exists {
            return Err(Error::RoomNotFound);
        }
        if token.is_none() {
            return Err(Error::MissingToken);
        }
        owner
            .as_deref()
            .and_then(PeerId::parse)
            .ok_or(Error::InvalidToken)
    }

    pub async fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: &[Outgoing],
        key: Option<&IdempotencyKey>,
    ) -> ApiResult<Sent> {
        let inner = &self.inner;
        let delivered = scripts::send(inner, room, token, batch, key).await?;
        let removed = delivered.removed;
        inner.departed(room, &removed.departures).await?;
        if let Some(emptied_us) = removed.emptied_us {
            scripts::release(inner, room, emptied_us).await?;
        }
        // `redis_wait_replicas`: 202 only once replicas hold it.
        inner.connection.wait(&inner.keys.wait_mark).await?;
        Ok(Sent {
            accepted: delivered.accepted,
            departures: removed.departures,
            replayed: delivered.replayed,
        })
    }

    pub async fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Reader> {
        scripts::authorize(&self.inner, room, peer, token).await?;
        Ok(Reader::new(Arc::clone(&self.inner), room.clone(), peer))
    }

    pub async fn room(&self, room: &RoomName) -> ApiResult<Option<Vec<PeerInfo>>> {
        let inner = &self.inner;
        let mut command = redis::cmd("HGETALL");
        let records: Vec<(String, String)> = inner
            .connection
            .query(command.arg(inner.keys.peers(room)))
            .await?;
        if records.is_empty() {
            return Ok(None);
        }
        let mut peers = records
            .iter()
            .map(|(id, record)| parse_record(id, record))
            .collect::<ApiResult<Vec<_>>>()?;
        peers.sort_by_key(|(seq, _)| *seq);
        Ok(Some(peers.into_iter().map(|(_, info)| info).collect()))
    }

    pub async fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.exists(inner.keys.peers(room));
        pipe.hget(inner.keys.peers(room), peer.to_string());
        let (exists, record): (bool, Option<String>) = inner.connection.query_pipe(&pipe).await?;
        if !exists {
            return Err(Error::RoomNotFound);
        }
        let record = record.ok_or(Error::PeerNotFound)?;
        parse_record(&peer.to_string(), &record).map(|(_, info)| info)
    }

    /// Sweeps the rooms due, by Redis's clock.
    pub async fn sweep(&self) -> ApiResult<Vec<(RoomName, Departure)>> {
        let inner = &self.inner;
        let rooms = scripts::due(inner).await?;
        let mut gone = Vec::new();
        for name in rooms {
            let Ok(room) = RoomName::parse(&name) else {
                continue;
            };
            let swept = scripts::sweep(inner, &room).await?;
            inner.departed(&room, &swept.departures).await?;
            if let Some(emptied_us) = swept.emptied_us {
                scripts::release(inner, &room, emptied_us).await?;
            } else if let Some(earliest_ms) = swept.earliest_ms {
                let mut command = redis::cmd("ZADD");
                command
                    .arg(&inner.keys.due)
                    .arg("XX")
                    .arg(earliest_ms)
                    .arg(room.as_str());
                let _: Value = inner.connection.query(&command).await?;
            }
            gone.extend(swept.departures.into_iter().map(|d| (room.clone(), d)));
        }
        Ok(gone)
    }

    /// Rooms and peers across every instance: two reads, however many rooms there are. The
    /// rooms are those counted for `max_rooms` (with any whose join is under way); the peers,
    /// the count the join and departure scripts keep.
    pub async fn counts(&self) -> ApiResult<(usize, usize)> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.zcard(&inner.keys.rooms);
        pipe.get(&inner.keys.peer_count);
        let (rooms, peers): (usize, Option<i64>) = inner.connection.query_pipe(&pipe).await?;
        Ok((rooms, peers.unwrap_or(0).max(0) as usize))
    }
}

impl Inner {
    /// Runs a room script through the connection (for `presence.rs`).
    async fn run_room(&self, call: &redis::Cmd) -> ApiResult<Value> {
        scripts::run_room(self, call).await
    }

    /// Room script `script` on the room whose peers hash is `peers` (for `presence.rs`).
    fn on_room(&self, script: &str, peers: &str) -> redis::Cmd {
        scripts::on_room(self, script, peers)
    }

    /// Gives back the places of peers that departed `room` in their addresses' counts and in
    /// the peer count.
    async fn departed(&self, room: &RoomName, departures: &[Departure]) -> ApiResult<()> {
        if departures.is_empty() {
            return Ok(());
        }
        let clients: Vec<String> = departures
            .iter()
            .map(|departure| {
                departure
                    .client
                    .map(|client| client.to_string())
                    .unwrap_or_default()
            })
            .collect();
        scripts::release_clients(self, room, &clients).await
    }
}
