//! The store: where rooms, peers and mailboxes live. A seam with two sides, chosen by config:
//!
//! - `memory`: one process's rooms in one map (the default; `cargo run` needs nothing else);
//! - `redis`: rooms in a shared Redis, so that several instances behave as one server.
//!
//! The [`Hub`](crate::hub::Hub) above keeps the rules that need no storage (validating and
//! encoding messages, error precedence, logging, metrics); each store implements the same
//! storage operations under the same contract, each atomic: a join checks the limits and
//! announces the peer, a send identifies the sender, checks the recipients and the rate, and
//! appends to every mailbox, a removal tells the room and evicts whoever that overflows. The
//! behaviour suite (`tests/`) runs on both.
//!
//! Dispatch is an enum rather than a trait object: the memory store's calls are plain function
//! calls whose futures complete at once, with no boxing or channel hop on its hot path.

pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::client_limits::ClientRefusal;
use crate::config::Config;
use crate::error::{ApiResult, Error};
use crate::identity::{PeerId, PeerToken, RoomName};
use crate::mailbox::{self, PollTicket, Read, StreamTicket, Ticket};
use crate::message::{Draft, EncodedMessage};
use crate::metrics::Metrics;

pub use crate::membership::LeaveReason;

use self::memory::MemoryStore;
use self::redis::RedisStore;

/// The limits a store enforces atomically, from [`Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_rooms: usize,
    pub max_peers_per_room: usize,
    pub mailbox_capacity: usize,
    pub replay_window: usize,
    pub send_rate_per_sec: f64,
    pub send_burst: f64,
    pub peer_timeout: Duration,
    pub max_peers_per_client: usize,
    pub max_rooms_per_client: usize,
    pub join_rate_per_sec: f64,
    pub join_burst: f64,
    /// `mailbox_max_bytes`: undelivered bytes per mailbox before eviction.
    pub mailbox_max_bytes: usize,
    /// `replay_window_bytes`: delivered bytes kept per mailbox for resumes.
    pub replay_window_bytes: usize,
    /// `client_max_held_bytes`: bytes held in mailboxes charged to one sender's address.
    pub client_max_held_bytes: usize,
    /// `max_held_bytes`: bytes held in all mailboxes (Redis: of the deployment).
    pub max_held_bytes: usize,
    /// `poll_max_bytes`: the byte budget of one read (a poll answer, a stream's read).
    pub poll_max_bytes: usize,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        Self {
            max_rooms: config.max_rooms,
            max_peers_per_room: config.max_peers_per_room,
            mailbox_capacity: config.mailbox_capacity,
            replay_window: config.replay_window,
            send_rate_per_sec: config.send_rate_per_sec,
            send_burst: config.send_burst,
            peer_timeout: config.peer_timeout(),
            max_peers_per_client: config.max_peers_per_client,
            max_rooms_per_client: config.max_rooms_per_client,
            join_rate_per_sec: config.join_rate_per_sec,
            join_burst: config.join_burst,
            mailbox_max_bytes: config.mailbox_max_bytes,
            replay_window_bytes: config.replay_window_bytes,
            client_max_held_bytes: config.client_max_held_bytes,
            max_held_bytes: config.max_held_bytes,
            poll_max_bytes: config.poll_max_bytes,
        }
    }

    /// The error for a join that a per-address limit refuses.
    pub fn client_refusal(&self, refusal: ClientRefusal) -> Error {
        // Retry-After: a peer of the address that went silent frees its place by then.
        match refusal {
            ClientRefusal::Peers => Error::TooManyPeersForClient {
                limit: self.max_peers_per_client,
                retry_after: self.peer_timeout,
            },
            ClientRefusal::Rooms => Error::TooManyRoomsForClient {
                limit: self.max_rooms_per_client,
                retry_after: self.peer_timeout,
            },
        }
    }
}

/// What other peers may know about a peer; never its token.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
}

/// The `leave` event the room hears when `peer` goes.
pub fn leave_event(peer: PeerId, reason: LeaveReason) -> Arc<EncodedMessage> {
    #[derive(Serialize)]
    struct Leave {
        peer_id: PeerId,
        reason: LeaveReason,
    }
    EncodedMessage::from_server(
        "leave",
        &Leave {
            peer_id: peer,
            reason,
        },
    )
}

/// A peer about to join. Its id is new, or, for a resumed join, one that was in the room before.
///
/// Both stores check a join in one order, and the first check that fails is the answer
/// (docs/API.md, "Which error wins"): the address's join rate ([`TooManyJoins`], charged
/// whatever follows), the id is in the room ([`PeerPresent`]), the room is full
/// ([`RoomFull`]), the room is new and the server holds `max_rooms` ([`TooManyRooms`]), the
/// address holds `max_peers_per_client` peers ([`TooManyPeersForClient`]), the room is new to
/// the address and it holds peers in `max_rooms_per_client` rooms ([`TooManyRoomsForClient`]).
/// A refused join changes nothing, and holds nothing (no room slot, no count).
///
/// [`TooManyJoins`]: crate::error::Error::TooManyJoins
/// [`PeerPresent`]: crate::error::Error::PeerPresent
/// [`RoomFull`]: crate::error::Error::RoomFull
/// [`TooManyRooms`]: crate::error::Error::TooManyRooms
/// [`TooManyPeersForClient`]: crate::error::Error::TooManyPeersForClient
/// [`TooManyRoomsForClient`]: crate::error::Error::TooManyRoomsForClient
pub struct NewPeer {
    pub info: PeerInfo,
    pub token: PeerToken,
    /// The limit key of the address it joins from ([`limit_key`]), held to the per-address
    /// limits (`None`: not counted).
    ///
    /// [`limit_key`]: crate::client_address::limit_key
    pub client: Option<IpAddr>,
}

/// A peer that left its room, and why; stores report them so that the hub logs and counts each
/// departure once, whichever instance caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub peer: PeerId,
    pub reason: LeaveReason,
    /// The limit key of the address it had joined from, whose counts it no longer adds to.
    pub client: Option<IpAddr>,
}

pub struct JoinOutcome {
    /// The peers that were already in the room, in join order.
    pub peers: Vec<PeerInfo>,
    /// Peers the announcement evicted (their backlog was full).
    pub departures: Vec<Departure>,
}

/// One message of a send: its recipient (`None`: every other peer) and its unsigned envelope.
pub struct Outgoing {
    pub to: Option<PeerId>,
    pub draft: Draft,
}

pub struct Sent {
    pub accepted: usize,
    /// Recipients the batch evicted.
    pub departures: Vec<Departure>,
}

/// The store a server was configured with.
// Built once per server and never moved after: boxing the memory store to even the variants
// would only add an indirection to every call on its hot path.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    /// Boxed, so that the enum is a pointer either way (the memory store holds its limits and
    /// tables inline); its calls stay plain function calls.
    Memory(Box<MemoryStore>),
    Redis(RedisStore),
}

impl Store {
    /// The store `config` names: Redis when `redis_url` is set, memory otherwise. Connecting
    /// to Redis happens lazily, so a server starts (and says it is not ready) while Redis is
    /// down.
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Self, String> {
        let limits = Limits::new(config);
        match &config.redis_url {
            None => Ok(Store::Memory(Box::new(MemoryStore::new(limits)))),
            Some(url) => RedisStore::new(
                url,
                config.redis_tls_ca_file.as_deref(),
                &config.redis_prefix,
                limits,
                metrics.clone(),
            )
            .map(Store::Redis),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    pub async fn join(
        &self,
        room: &RoomName,
        peer: NewPeer,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome> {
        match self {
            Store::Memory(store) => store.join(room, peer, announcement),
            Store::Redis(store) => store.join(room, peer, announcement).await,
        }
    }

    /// Charges one join to `client` (a limit key) against `join_rate_per_sec` and `join_burst`:
    /// per process on the memory store, deployment-wide on Redis. For a join refused before
    /// [`join`](Self::join), which charges the rate itself (first, before any other check; on
    /// Redis in the admission's round trip).
    pub async fn charge_join(&self, client: IpAddr) -> ApiResult<()> {
        match self {
            Store::Memory(store) => store.charge_join(client),
            Store::Redis(store) => store.charge_join(client).await,
        }
    }

    pub async fn leave(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Vec<Departure>> {
        match self {
            Store::Memory(store) => store.leave(room, peer, token),
            Store::Redis(store) => store.leave(room, peer, token).await,
        }
    }

    /// The peer `token` belongs to, with the errors of an unauthenticated request.
    pub async fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId> {
        match self {
            Store::Memory(store) => store.identify(room, token),
            Store::Redis(store) => store.identify(room, token).await,
        }
    }

    /// Identifies the sender by `token`, checks the recipients and the sender's rate, signs
    /// each message and appends it to every recipient's mailbox: all of it, or none.
    pub async fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: &[Outgoing],
    ) -> ApiResult<Sent> {
        match self {
            Store::Memory(store) => store.send(room, token, batch),
            Store::Redis(store) => store.send(room, token, batch).await,
        }
    }

    /// The mailbox of `peer` for the request that proves to be that peer.
    pub async fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Reader> {
        match self {
            Store::Memory(store) => store.mailbox(room, peer, token).map(Reader::Memory),
            Store::Redis(store) => store.reader(room, peer, token).await.map(Reader::Redis),
        }
    }

    pub async fn room(&self, room: &RoomName) -> ApiResult<Option<Vec<PeerInfo>>> {
        match self {
            Store::Memory(store) => Ok(store.room(room)),
            Store::Redis(store) => store.room(room).await,
        }
    }

    pub async fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo> {
        match self {
            Store::Memory(store) => store.peer(room, peer),
            Store::Redis(store) => store.peer(room, peer).await,
        }
    }

    /// Removes every peer that no instance has seen listening for `timeout`; each removal is
    /// reported by exactly one sweep, however many instances sweep at once.
    pub async fn sweep(
        &self,
        now: Instant,
        timeout: Duration,
    ) -> ApiResult<Vec<(RoomName, Departure)>> {
        match self {
            Store::Memory(store) => Ok(store.sweep(now, timeout)),
            Store::Redis(store) => store.sweep().await,
        }
    }

    /// Rooms and peers held right now (by every instance, for a shared store).
    pub async fn counts(&self) -> ApiResult<(usize, usize)> {
        match self {
            Store::Memory(store) => Ok(store.counts()),
            Store::Redis(store) => store.counts().await,
        }
    }

    /// Whether the store answers: always for memory, a round trip for Redis.
    pub async fn ready(&self) -> ApiResult<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(store) => store.ping().await,
        }
    }
}

/// A peer's mailbox, as its stream or poll reads it.
pub enum Reader {
    Memory(Arc<mailbox::Mailbox>),
    Redis(redis::Reader),
}

/// Wakes a reader when its mailbox may have changed: a new message, a newer stream, the peer's
/// removal. Only a wake-up: the reader then reads the mailbox by id, so a missed or extra
/// wake-up never loses or repeats a message.
pub struct Wake {
    receiver: watch::Receiver<u64>,
    /// Keeps the instance's Redis subscription for this mailbox while the reader lives.
    _subscription: Option<redis::Subscription>,
}

impl Wake {
    /// Forgets the wake-ups seen so far: call before each read.
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
    }

    /// Whether a wake-up came since the last [`mark_seen`](Self::mark_seen).
    pub fn pending(&self) -> bool {
        self.receiver.has_changed().unwrap_or(true)
    }

    /// Resolves at the next wake-up after the last [`mark_seen`](Self::mark_seen); an error
    /// means no more will come.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.receiver.changed().await
    }
}

/// Keeps its peer present (not timed out) while it lives: a stream or a poll in flight.
pub enum Listening {
    Memory(mailbox::Listening),
    Redis(redis::Listening),
}

impl Reader {
    /// Subscribes to the mailbox's wake-ups. Subscribe before the first read, so that nothing
    /// appended after that read goes unnoticed.
    pub async fn subscribe(&self) -> ApiResult<Wake> {
        match self {
            Reader::Memory(mailbox) => Ok(Wake {
                receiver: mailbox.subscribe(),
                _subscription: None,
            }),
            Reader::Redis(reader) => reader.subscribe().await,
        }
    }

    /// Makes the caller the peer's live stream (any earlier one, on any instance, ends), after
    /// acknowledging everything up to `acknowledge`. Returns the ticket and the newest id.
    pub async fn open_stream(&self, acknowledge: Option<u64>) -> ApiResult<(StreamTicket, u64)> {
        match self {
            Reader::Memory(mailbox) => {
                if let Some(id) = acknowledge {
                    mailbox.acknowledge(id);
                }
                Ok((mailbox.open_stream(), mailbox.last_id()))
            }
            Reader::Redis(reader) => reader.open_stream(acknowledge).await,
        }
    }

    /// Makes the caller the peer's one poll in flight (an older poll, on any instance, reads
    /// `Replaced` and answers at once), after acknowledging everything up to `acknowledge`.
    pub async fn open_poll(&self, acknowledge: u64) -> ApiResult<PollTicket> {
        match self {
            Reader::Memory(mailbox) => {
                mailbox.acknowledge(acknowledge);
                Ok(mailbox.open_poll())
            }
            Reader::Redis(reader) => reader.open_poll(acknowledge).await,
        }
    }

    /// Marks every message up to `id` as delivered. The memory store applies it at once; the
    /// Redis store sends it with the next read, saving a round trip per batch, or with
    /// [`flush`](Self::flush) when no read follows.
    pub fn acknowledge(&self, id: u64) {
        match self {
            Reader::Memory(mailbox) => mailbox.acknowledge(id),
            Reader::Redis(reader) => reader.acknowledge(id),
        }
    }

    /// Applies an acknowledgement that is still waiting for a read: a reader calls it before it
    /// waits with nothing to read, so that what it delivered counts as delivered.
    pub async fn flush(&self) -> ApiResult<()> {
        match self {
            Reader::Memory(_) => Ok(()),
            Reader::Redis(reader) => reader.flush().await,
        }
    }

    /// What follows `cursor`: at most `max_bytes` of encoded envelopes, but always at least
    /// one entry when any follows (`poll_max_bytes` is at least `max_message_bytes`). With a
    /// `ticket`, reports `Replaced` once a newer reader of its kind started.
    pub async fn read(
        &self,
        cursor: u64,
        ticket: Option<Ticket>,
        max_bytes: usize,
    ) -> ApiResult<Read> {
        match self {
            Reader::Memory(mailbox) => Ok(mailbox.read_after(cursor, ticket, max_bytes)),
            Reader::Redis(reader) => reader.read(cursor, ticket, max_bytes).await,
        }
    }

    /// Registers a listener for presence until the guard is dropped.
    pub fn listen(&self) -> Listening {
        match self {
            Reader::Memory(mailbox) => Listening::Memory(mailbox.listen()),
            Reader::Redis(reader) => Listening::Redis(reader.listen()),
        }
    }

    /// Whether the store may wake this reader late (a shared store whose wake-ups travel over
    /// a connection that can drop unnoticed for a while): such readers also look again
    /// periodically, so that a lost wake-up delays a message by that much at most.
    pub fn may_miss_wakeups(&self) -> bool {
        matches!(self, Reader::Redis(_))
    }
}
