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
//! The store is a trait object, [`Arc<dyn Store>`](Store), and a peer's mailbox a
//! [`Box<dyn Reader>`](Reader): nothing outside `store/` knows which store it runs on, and adding
//! a store means implementing these two traits (and passing the behaviour suite on it), with no
//! match arm to add anywhere else. The methods' doc comments are the contract every store keeps.
//! What it costs: every async call allocates one boxed future (`async-trait`: a trait object's
//! async methods cannot return an unnamed future) and goes through a vtable: some 0.4 µs per
//! relayed message in `benches/hub.rs`, against the 20–30 µs of server CPU a message costs end
//! to end, where the two measure within 3 % (docs/BENCHMARKS.md, "The store as a trait
//! object"). The memory store's futures still complete at their first poll, so a send or a read
//! on it never waits or switches task (a unit test polls them once). A reader and its listening
//! guard are boxed once per stream or poll, never per message.

pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::client_limits::ClientRefusal;
use crate::config::Config;
use crate::error::{ApiResult, Error};
use crate::idempotency::IdempotencyKey;
use crate::identity::{PeerId, PeerToken, RoomName};
use crate::mailbox::{PollTicket, Read, StreamTicket, Ticket};
use crate::message::{Draft, EncodedMessage};
use crate::metrics::Metrics;
use crate::wake_counter::{Closed, WakeWatcher};

use rocket::async_trait;

pub use crate::membership::LeaveReason;

use self::memory::MemoryStore;
use self::redis::{RedisStore, Target as RedisTarget};

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
    /// `idempotency_window_secs`: how long a keyed send is remembered.
    pub idempotency_window: Duration,
    /// `idempotency_keys_per_peer`: keyed sends remembered per peer at once.
    pub idempotency_keys_per_peer: usize,
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
            idempotency_window: config.idempotency_window(),
            idempotency_keys_per_peer: config.idempotency_keys_per_peer,
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
/// Every [`Store::join`] checks a join in this order, and the first check that fails is the
/// answer (docs/API.md, "Which error wins"):
/// 1. the address's join rate ([`TooManyJoins`]; charged whatever follows);
/// 2. the id is in the room ([`PeerPresent`]);
/// 3. the room is full ([`RoomFull`]);
/// 4. the room is new and the server (the deployment, on a shared store) holds `max_rooms`
///    ([`TooManyRooms`]);
/// 5. the address holds `max_peers_per_client` peers ([`TooManyPeersForClient`]);
/// 6. the room is new to the address and it holds peers in `max_rooms_per_client` rooms
///    ([`TooManyRoomsForClient`]).
///
/// A refused join changes nothing but the join rate it charged, and holds nothing (no room
/// slot, no count).
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
    /// The send was one remembered under its idempotency key: answered as the first was, with
    /// nothing appended, charged or evicted this time.
    pub replayed: bool,
}

/// The store `config` names: Redis when `redis_url`, `redis_sentinels` or
/// `redis_cluster_nodes` is set, memory
/// otherwise. Connecting to Redis happens lazily, so a server starts (and says it is not ready)
/// while Redis is down.
pub fn open(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, String> {
    let limits = Limits::new(config);
    let target = match (&config.redis_url, &config.redis_sentinels) {
        (Some(url), _) => Some(RedisTarget::Url(url.clone())),
        (None, Some(sentinels)) => Some(RedisTarget::Sentinel {
            sentinels: sentinels.clone(),
            master: config.redis_sentinel_master.clone().unwrap_or_default(),
            password: config.redis_sentinel_password.clone(),
        }),
        (None, None) => config
            .redis_cluster_nodes
            .clone()
            .map(|nodes| RedisTarget::Cluster { nodes }),
    };
    match target {
        None => Ok(Arc::new(MemoryStore::new(limits))),
        Some(target) => Ok(Arc::new(RedisStore::new(
            &target,
            config.redis_tls_ca_file.as_deref(),
            (config.redis_wait_replicas > 0).then(|| redis::WaitReplicas {
                replicas: config.redis_wait_replicas,
                timeout: Duration::from_millis(config.redis_wait_timeout_ms),
            }),
            &config.redis_prefix,
            limits,
            metrics.clone(),
        )?)),
    }
}

/// Where rooms, peers and mailboxes live: the storage operations the [`Hub`](crate::hub::Hub)
/// performs, each atomic. Every store answers them with the same results and the same errors
/// (the behaviour suite runs on each); one that cannot reach its storage answers
/// [`StoreUnavailable`](Error::StoreUnavailable) and changes nothing it can know of.
#[async_trait]
pub trait Store: Send + Sync {
    /// The store's name, as `/healthz` and `/readyz` report it: `"memory"` or `"redis"`.
    fn kind(&self) -> &'static str;

    /// Starts the store's background work (Redis: the presence refresher and the wake-up
    /// subscriber), which stops with `shutdown`. Called once, at liftoff. Default: nothing.
    fn start(&self, _shutdown: rocket::Shutdown) {}

    /// Whether the store answers: always for memory, a round trip for Redis.
    async fn ready(&self) -> ApiResult<()>;

    /// Charges one join to `client` (a limit key) against `join_rate_per_sec` and `join_burst`:
    /// per process on the memory store, deployment-wide on Redis. For a join refused before
    /// [`join`](Self::join), which charges the rate itself (first, before any other check; on
    /// Redis in the admission's round trip).
    async fn charge_join(&self, client: IpAddr) -> ApiResult<()>;

    /// Adds `peer` to `room` (creating the room), after the checks [`NewPeer`] lists, in its
    /// order; the first that fails is the answer, and a refused join changes nothing but the
    /// join rate it charged. Announces the peer to the others with `announcement` (their `join`
    /// event), evicting whoever that overflows. Returns the peers that were already there.
    async fn join(
        &self,
        room: &RoomName,
        peer: NewPeer,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome>;

    /// Removes `peer` at the request of the holder of `token` (its own token, else the errors
    /// of [`reader`](Self::reader)), closes its mailbox and tells the others, evicting whoever
    /// that overflows. Returns every departure, the peer's first.
    async fn leave(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Vec<Departure>>;

    /// The peer `token` belongs to, with the errors of an unauthenticated request:
    /// `room_not_found`, `missing_token`, `invalid_token`. Tokens are compared in constant time.
    async fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId>;

    /// Identifies the sender by `token`, checks the recipients (in batch order: not the sender,
    /// in the room), the bytes the sender's address holds and the sender's rate, signs each
    /// message and appends it to every recipient's mailbox: all of it, or none. A recipient
    /// whose mailbox overflows is evicted, and the rest is delivered.
    ///
    /// With a `key` (`Idempotency-Key`), right after identifying the sender: a send of the same
    /// batch ([`Fingerprint`]) under the same key by the same peer within
    /// `idempotency_window` is answered as that one was ([`Sent::replayed`]), appending and
    /// charging nothing; another batch under it is `idempotency_key_reused`. An accepted keyed
    /// send is remembered atomically with its append, at most `idempotency_keys_per_peer` per
    /// peer (the oldest forgotten first), until the window ends or the peer leaves; a refused
    /// one is not.
    ///
    /// [`Fingerprint`]: crate::idempotency::Fingerprint
    async fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: &[Outgoing],
        key: Option<&IdempotencyKey>,
    ) -> ApiResult<Sent>;

    /// The mailbox of `peer` for the request that proves to be that peer: `room_not_found`,
    /// then `peer_not_found` (whatever the token: a removed client learns that it is gone),
    /// then `missing_token` / `invalid_token`, then `wrong_peer` for another peer's token.
    async fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Box<dyn Reader>>;

    /// The peers of `room`, in join order, or `None` if it does not exist.
    async fn room(&self, room: &RoomName) -> ApiResult<Option<Vec<PeerInfo>>>;

    /// One peer's public description: `room_not_found`, `peer_not_found`.
    async fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo>;

    /// Removes every peer that no instance has seen listening (no stream, no poll in flight)
    /// for the store's `peer_timeout`, telling the others with reason `timeout`. Each removal
    /// is reported by exactly one sweep, however many instances sweep at once; a sweep may
    /// leave some for the next (Redis looks at a bounded number of rooms per call).
    async fn sweep(&self) -> ApiResult<Vec<(RoomName, Departure)>>;

    /// Rooms and peers held right now (by every instance, for a shared store).
    async fn counts(&self) -> ApiResult<(usize, usize)>;
}

/// A peer's mailbox, as its stream or poll reads it. Ids are gapless and never reused; the
/// stored mailbox is the truth, and wake-ups only say when to read it.
#[async_trait]
pub trait Reader: Send + Sync {
    /// Subscribes to the mailbox's wake-ups. Subscribe before the first read, so that nothing
    /// appended after that read goes unnoticed.
    async fn subscribe(&self) -> ApiResult<Wake>;

    /// Makes the caller the peer's live stream (any earlier one, on any instance, then reads
    /// `Replaced`), after acknowledging everything up to `acknowledge`. Returns the ticket and
    /// the newest id; `PeerNotFound` once the peer is gone.
    async fn open_stream(&self, acknowledge: Option<u64>) -> ApiResult<(StreamTicket, u64)>;

    /// Makes the caller the peer's one poll in flight (an older poll, on any instance, reads
    /// `Replaced` and answers at once), after acknowledging everything up to `acknowledge`.
    /// Returns the ticket and the newest id; `PeerNotFound` once the peer is gone. The caller
    /// [`listen`](Self::listen)s first. Its own open need not wake it (Redis passes over it,
    /// the memory store wakes only when someone else listens), so a caller whose open saw
    /// nothing new waits for a wake-up before it reads.
    async fn open_poll(&self, acknowledge: u64) -> ApiResult<(PollTicket, u64)>;

    /// What a poll does first, in this order: [`listen`](Self::listen)s, [`subscribe`]
    /// (Self::subscribe)s, marks what it has seen of the wake-ups, and [`open_poll`]
    /// (Self::open_poll)s. A store may do it all at once (the memory store: under one lock).
    async fn start_poll(&self, acknowledge: u64) -> ApiResult<PollStart> {
        let listening = self.listen();
        let mut wake = self.subscribe().await?;
        wake.mark_seen();
        let (ticket, newest) = self.open_poll(acknowledge).await?;
        Ok(PollStart {
            listening,
            wake,
            ticket,
            newest,
        })
    }

    /// Marks every message up to `id` as delivered. The memory store applies it at once; the
    /// Redis store sends it with the next read, saving a round trip per batch, or with
    /// [`flush`](Self::flush) when no read follows.
    fn acknowledge(&self, id: u64);

    /// Whether an acknowledgement is waiting for the next read or [`flush`](Self::flush).
    fn unflushed(&self) -> bool;

    /// Applies an acknowledgement that is still waiting for a read: a reader calls it when no
    /// read has carried it for a while, so that what it delivered counts as delivered.
    async fn flush(&self) -> ApiResult<()>;

    /// What follows `cursor`: at most `max_bytes` of encoded envelopes, but always at least
    /// one entry when any follows (`poll_max_bytes` is at least `max_message_bytes`). With a
    /// `ticket`, reports `Replaced` once a newer reader of its kind started; `Closed` once the
    /// peer is gone. A `cursor` the mailbox no longer holds the successor of reads a `reset`.
    async fn read(&self, cursor: u64, ticket: Option<Ticket>, max_bytes: usize) -> ApiResult<Read>;

    /// Keeps the peer present (not timed out) until the guard is dropped.
    fn listen(&self) -> Listening;

    /// Whether the store may wake this reader late (a shared store whose wake-ups travel over
    /// a connection that can drop unnoticed for a while): such readers also look again
    /// periodically, so that a lost wake-up delays a message by that much at most.
    fn may_miss_wakeups(&self) -> bool;
}

/// A poll, started ([`Reader::start_poll`]).
pub struct PollStart {
    /// Keeps the peer present while the poll waits.
    pub listening: Listening,
    /// The mailbox's wake-ups, seen up to the poll's open.
    pub wake: Wake,
    pub ticket: PollTicket,
    /// The newest id when the poll opened.
    pub newest: u64,
}

/// Wakes a reader when its mailbox may have changed: a new message, a newer stream, the peer's
/// removal. Only a wake-up: the reader then reads the mailbox by id, so a missed or extra
/// wake-up never loses or repeats a message.
pub struct Wake {
    /// Keeps the value seen last (at [`mark_seen`](Self::mark_seen) or a wake-up passed over).
    watcher: WakeWatcher,
    /// For a store whose wake-ups say which open sent them (Redis): the nonce of this reader's
    /// own open, whose wake-up ([`OwnOpens`]) is passed over.
    own_opens: Option<Arc<AtomicU32>>,
    /// Whatever the store keeps alive while the reader lives (Redis: the instance's
    /// subscription to the mailbox's channel); dropped with the `Wake`.
    _guard: Option<Box<dyn Send + Sync>>,
}

/// How a store's wake-ups tell a reader's own open apart, so that opening does not wake the
/// reader that opened (an open wakes the peer's older readers, to tell them they were
/// replaced): each value of the watch is `count << 32 | nonce`, the count of wake-ups so far
/// (modulo 2^32) and the nonce of the open that sent the last one (0: not an open). A reader
/// passes over a change that is exactly one wake-up, sent by its own open; any other wake-up
/// in between makes it a real one.
pub struct OwnOpens;

impl OwnOpens {
    /// The value after `value` of one more wake-up, from the open with `nonce` (0: none).
    pub fn next(value: u64, nonce: u32) -> u64 {
        (((value >> 32) + 1) << 32) | u64::from(nonce)
    }

    /// Whether going from `seen` to `now` was one wake-up only, sent by the open with `own`.
    fn only_own(seen: u64, now: u64, own: u32) -> bool {
        own != 0 && now >> 32 == ((seen >> 32) + 1) & 0xffff_ffff && now as u32 == own
    }
}

impl Wake {
    /// Wake-ups from `watcher` (any change of its value is one), keeping `guard` alive as long
    /// as the `Wake`.
    pub fn new(watcher: WakeWatcher, guard: Option<Box<dyn Send + Sync>>) -> Self {
        Self {
            watcher,
            own_opens: None,
            _guard: guard,
        }
    }

    /// Wake-ups from `watcher`, whose values are [`OwnOpens`]', passing over the one sent by
    /// the open whose nonce is in `own` at the time.
    pub fn passing_own_opens(
        watcher: WakeWatcher,
        own: Arc<AtomicU32>,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self {
            own_opens: Some(own),
            ..Self::new(watcher, guard)
        }
    }

    /// Forgets the wake-ups seen so far: call before each read.
    pub fn mark_seen(&mut self) {
        self.watcher.mark_seen();
    }

    /// Resolves at the next wake-up after the last [`mark_seen`](Self::mark_seen), other than
    /// the reader's own open's; an error means no more will come.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let seen = self.watcher.seen();
            let now = self.watcher.changed().await?;
            let own = self
                .own_opens
                .as_ref()
                .map_or(0, |own| own.load(Ordering::Acquire));
            if !OwnOpens::only_own(seen, now, own) {
                return Ok(());
            }
        }
    }
}

/// Keeps its peer present (not timed out) while it lives: a stream or a poll in flight. Opaque:
/// each store's guard unregisters its listener when dropped.
#[must_use = "the peer counts as listening only while the guard lives"]
pub struct Listening {
    _guard: Box<dyn Send + Sync>,
}

impl Listening {
    /// A listener that `guard` keeps registered until it is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::wake_counter::WakeCounter;

    /// A `Wake` passing over the opens with the nonce in `own`, fed by the returned sender.
    fn passing(own: u32) -> (WakeCounter, Wake) {
        let counter = WakeCounter::new(OwnOpens::next(0, 0));
        let own = Arc::new(AtomicU32::new(own));
        let wake = Wake::passing_own_opens(counter.watch(), own, None);
        (counter, wake)
    }

    fn wake_up(counter: &WakeCounter, nonce: u32) {
        counter.change(|value| OwnOpens::next(value, nonce));
    }

    /// Its own open's wake-up alone does not wake a reader; anything else does: another
    /// reader's open, any other wake-up, or its own open's together with another.
    #[test]
    fn a_reader_passes_over_its_own_open_only() {
        let (sender, mut wake) = passing(7);
        wake.mark_seen();
        wake_up(&sender, 7);
        assert!(wake.changed().now_or_never().is_none(), "its own open");
        wake_up(&sender, 8);
        assert!(
            wake.changed().now_or_never().is_some(),
            "a newer reader's open"
        );
        wake_up(&sender, 0);
        assert!(wake.changed().now_or_never().is_some(), "a message");
        wake.mark_seen();
        wake_up(&sender, 0);
        wake_up(&sender, 7);
        assert!(
            wake.changed().now_or_never().is_some(),
            "a message, then its own open"
        );
        // The count wraps at 2^32 and still tells one wake-up from two.
        sender.change(|_| (u64::from(u32::MAX) << 32) | 3);
        wake.mark_seen();
        wake_up(&sender, 7);
        assert_eq!(sender.get(), 7, "the count wrapped");
        assert!(
            wake.changed().now_or_never().is_none(),
            "its own open, wrapped"
        );
        // Without a nonce of its own (before its open), every wake-up wakes it.
        let (sender, mut wake) = passing(0);
        wake.mark_seen();
        wake_up(&sender, 0);
        assert!(wake.changed().now_or_never().is_some());
    }

    /// A store that does not tell opens apart wakes on every change, its opener's too.
    #[test]
    fn a_plain_wake_wakes_on_every_change() {
        let counter = WakeCounter::new(0);
        let mut wake = Wake::new(counter.watch(), None);
        wake.mark_seen();
        counter.change(|n| n + 1);
        assert!(wake.changed().now_or_never().is_some());
    }
}
