//! The Redis store: rooms in a shared Redis, so that several signpost instances behave, to any
//! client, as one server.
//!
//! Every atomic step is a Lua script of its own in `lua/` (join, leave, send, read, …), each
//! with a header saying its keys, arguments and reply; `lua/room.lua` holds what the room
//! scripts share (the key layout, appending to a mailbox, removing a peer and its cascade of
//! evictions) and is prepended to each. A send is one round trip: the script identifies the
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
//! trims or removes, in the same step: nothing to undo if an instance dies in between.
//!
//! With the `redis-tls` feature, a `rediss://` URL connects over TLS (`tls.rs`): both
//! connections are made from one client that carries the TLS settings.

mod presence;
mod seam;
#[cfg(feature = "redis-tls")]
mod tls;
mod wakeups;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use sha2::{Digest, Sha256};

use crate::client_limits::ClientRefusal;
use crate::error::{ApiResult, Error};
use crate::identity::{PeerId, RoomName};
use crate::logging;
use crate::mailbox::{Batch, Entry, PollTicket, Read, ResetReason, StreamTicket, Ticket};
use crate::message::EncodedMessage;
use crate::metrics::Metrics;
use crate::store::{
    Departure, JoinOutcome, LeaveReason, Limits, NewPeer, Outgoing, PeerInfo, Sent,
};

pub use self::presence::Listening;
pub use self::wakeups::Subscription;

/// Most entries one read returns (besides its byte budget); a reader with more waiting reads
/// again at once.
const READ_LIMIT: usize = 256;
/// Rooms one sweep tick looks at; the rest wait for the next tick.
const SWEEP_LIMIT: usize = 256;
/// How long a round trip may take before the request is answered `503 store_unavailable`: a
/// healthy Redis answers in well under a millisecond, so this only bounds a hang.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Expiry of the global keys: refreshed by every sweep tick, so they outlive instances that
/// crashed by this much and no more.
const GLOBAL_TTL: Duration = Duration::from_secs(3600);

macro_rules! room_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/room.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// The scripts, hashed once: `EVALSHA` after the first use, reloaded on `NOSCRIPT` (a Redis
/// restarted empty forgets them).
struct Scripts {
    join: Script,
    leave: Script,
    send: Script,
    authorize: Script,
    open: Script,
    read: Script,
    ack: Script,
    touch: Script,
    sweep: Script,
    reserve: Script,
    created: Script,
    release: Script,
    due: Script,
    clients: Script,
    joins: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            join: room_script!("join.lua"),
            leave: room_script!("leave.lua"),
            send: room_script!("send.lua"),
            authorize: room_script!("authorize.lua"),
            open: room_script!("open.lua"),
            read: room_script!("read.lua"),
            ack: room_script!("ack.lua"),
            touch: room_script!("touch.lua"),
            sweep: room_script!("sweep.lua"),
            reserve: Script::new(concat!(
                include_str!("lua/join_rate.lua"),
                include_str!("lua/reserve.lua")
            )),
            created: Script::new(include_str!("lua/created.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            due: Script::new(include_str!("lua/due.lua")),
            clients: Script::new(include_str!("lua/clients.lua")),
            joins: Script::new(concat!(
                include_str!("lua/join_rate.lua"),
                include_str!("lua/joins.lua")
            )),
        }
    }
}

/// Key names, from the configured prefix.
struct Keys {
    prefix: String,
    /// Room name -> when it was created (µs): counts rooms for `max_rooms`.
    rooms: String,
    /// Room name -> its earliest presence deadline (ms): what the sweepers look at.
    due: String,
    /// Client key -> its live peers, for `max_peers_per_client`.
    clients: String,
    /// Client key -> the rooms where it has peers, and `<client key> <room>` -> its peers
    /// there, for `max_rooms_per_client`.
    client_rooms: String,
    /// The live peers of the deployment, for `/metrics`.
    peer_count: String,
    /// Client address -> bytes its sends hold in mailboxes, and `*` -> bytes held in all of
    /// them: `client_max_held_bytes` and `max_held_bytes`, charged and released by the room
    /// scripts (`KEYS[2]` of each).
    held: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            rooms: format!("{prefix}:{{{prefix}:global}}:rooms"),
            due: format!("{prefix}:{{{prefix}:global}}:due"),
            clients: format!("{prefix}:{{{prefix}:global}}:clients"),
            client_rooms: format!("{prefix}:{{{prefix}:global}}:client-rooms"),
            peer_count: format!("{prefix}:{{{prefix}:global}}:peer-count"),
            held: format!("{prefix}:{{{prefix}:global}}:held"),
        }
    }

    /// The join bucket of a client key (`lua/joins.lua`).
    fn join_bucket(&self, client: &str) -> String {
        format!("{}:{{{}:global}}:join:{client}", self.prefix, self.prefix)
    }

    /// Key `suffix` (`peers`, `tokens`, …) of `room`: every key of a room carries its `{room}`
    /// hash tag (`lua/room.lua` lists them).
    fn of_room(&self, room: &str, suffix: &str) -> String {
        format!("{}:{{{room}}}:{suffix}", self.prefix)
    }

    /// The room's peers hash, `KEYS[1]` of every room script; the others derive from it.
    fn peers(&self, room: &RoomName) -> String {
        self.of_room(room.as_str(), "peers")
    }

    /// The channel that wakes `peer`'s readers (`lua/room.lua` names it the same way).
    fn wake(&self, peer: PeerId) -> String {
        format!("{}:w:{peer}", self.prefix)
    }
}

/// A cheap handle: the store's state is shared with its readers and background tasks.
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reconnects by itself; a command sent while Redis is unreachable fails instead of waiting.
    connection: ConnectionManager,
    client: redis::Client,
    scripts: Scripts,
    keys: Keys,
    limits: Limits,
    /// Room keys expire this long after their last write or presence refresh: longer than any
    /// peer may stay silent, so only rooms that no live instance looks after expire.
    key_ttl_ms: u64,
    wakeups: wakeups::Wakeups,
    presence: presence::Presence,
    metrics: Metrics,
}

impl RedisStore {
    /// A store on `url`, over TLS for `rediss://` with `tls_ca_file`'s CAs if given; connects
    /// lazily, so this succeeds while Redis is down.
    pub fn new(
        url: &str,
        tls_ca_file: Option<&Path>,
        prefix: &str,
        limits: Limits,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let client = open(url, tls_ca_file)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|error| format!("cannot set up the Redis connection: {error}"))?;
        let timeout_ms = limits.peer_timeout.as_millis() as u64;
        let inner = Arc::new(Inner {
            connection,
            client: client.clone(),
            scripts: Scripts::new(),
            keys: Keys::new(prefix),
            key_ttl_ms: (timeout_ms * 3).max(60_000),
            limits,
            wakeups: wakeups::Wakeups::new(),
            presence: presence::Presence::new(),
            metrics,
        });
        Ok(Self { inner })
    }

    /// Starts the wake-up connection and the presence refresher; both end with `shutdown`.
    pub fn start(&self, shutdown: rocket::Shutdown) {
        wakeups::spawn(
            self.inner.client.clone(),
            Arc::clone(&self.inner),
            shutdown.clone(),
        );
        presence::spawn(Arc::clone(&self.inner), shutdown);
    }

    pub async fn ping(&self) -> ApiResult<()> {
        let _: Value = self.inner.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Charges a join that is refused before it reaches [`join`](Self::join), which charges
    /// the others itself.
    pub async fn charge_join(&self, client: IpAddr) -> ApiResult<()> {
        let inner = &self.inner;
        let wait_ms: u64 = inner
            .run(
                inner
                    .scripts
                    .joins
                    .key(inner.keys.join_bucket(&client.to_string()))
                    .arg(inner.limits.join_rate_per_sec)
                    .arg(inner.limits.join_burst),
            )
            .await?;
        if wait_ms > 0 {
            return Err(Error::TooManyJoins {
                retry_after: Duration::from_millis(wait_ms),
            });
        }
        Ok(())
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
        let bucket = inner
            .keys
            .join_bucket(client.as_deref().unwrap_or_default());
        let reply: Value = inner
            .run(
                inner
                    .on_globals(&inner.scripts.reserve)
                    .key(&inner.keys.clients)
                    .key(&inner.keys.client_rooms)
                    .key(&inner.keys.peer_count)
                    .key(bucket)
                    .arg(room.as_str())
                    .arg(limits.max_rooms)
                    .arg(GLOBAL_TTL.as_millis() as u64)
                    .arg(limits.peer_timeout.as_millis() as u64)
                    .arg(client.as_deref().unwrap_or_default())
                    .arg(limits.max_peers_per_client)
                    .arg(limits.max_rooms_per_client)
                    .arg(limits.join_rate_per_sec)
                    .arg(limits.join_burst),
            )
            .await?;
        let reply = Reply::new(reply)?;
        let refusal = match reply.status()? {
            "ok" => None,
            // The first check of all: answered as it is.
            "too_many_joins" => {
                return Err(Error::TooManyJoins {
                    retry_after: Duration::from_millis(reply.int(1)?.max(1) as u64),
                })
            }
            "too_many_rooms" => Some(Error::TooManyRooms {
                limit: limits.max_rooms,
            }),
            "too_many_peers_for_client" => Some(limits.client_refusal(ClientRefusal::Peers)),
            "too_many_rooms_for_client" => Some(limits.client_refusal(ClientRefusal::Rooms)),
            other => return Err(unexpected(other)),
        };
        if let Some(refusal) = refusal {
            // The room's own checks come first: the same answer as the memory store's.
            return Err(self
                .room_refusal(room, peer.info.peer_id)
                .await?
                .unwrap_or(refusal));
        }
        let reserved = reply.int(1)?;
        let joined = self
            .join_room(room, peer, client.as_deref(), announcement)
            .await;
        if joined.is_err() {
            // Best effort: the join's own error is the answer. Counts left behind by a failure
            // here expire with the keys; a reservation, with the sweep.
            let released = inner
                .release_clients(room, &[client.unwrap_or_default()])
                .await;
            if released.is_ok() && reserved > 0 {
                let _ = inner.release(room, reserved).await;
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
        let (present, peers): (bool, usize) = inner.query_pipe(&pipe).await?;
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

    async fn join_room(
        &self,
        room: &RoomName,
        peer: NewPeer,
        client: Option<&str>,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome> {
        let inner = &self.inner;
        let limits = &inner.limits;
        let info = StoredInfo {
            name: peer.info.name.clone(),
            meta: peer.info.meta.clone(),
        };
        let info = serde_json::to_string(&info).map_err(|_| Error::Internal("peer info"))?;
        let reply: Value = inner
            .run(
                inner
                    .on_room(&inner.scripts.join, &inner.keys.peers(room))
                    .arg(peer.info.peer_id.to_string())
                    .arg(digest(peer.token.reveal()))
                    .arg(client.unwrap_or_default())
                    .arg(info)
                    .arg(stored(&announcement))
                    .arg(limits.max_peers_per_room)
                    .arg(limits.mailbox_capacity)
                    .arg(limits.send_burst)
                    .arg(limits.peer_timeout.as_millis() as u64)
                    .arg(inner.key_ttl_ms)
                    .arg(limits.mailbox_max_bytes),
            )
            .await?;
        let reply = Reply::new(reply)?;
        match reply.status()? {
            "ok" => {}
            "peer_present" => return Err(Error::PeerPresent),
            "room_full" => {
                return Err(Error::RoomFull {
                    limit: limits.max_peers_per_room,
                })
            }
            other => return Err(unexpected(other)),
        }
        let created = reply.int(1)? == 1;
        let peers = reply
            .strings(2)?
            .chunks(2)
            .map(|pair| match pair {
                [id, info] => parse_info(id, info),
                _ => Err(unexpected("an odd list of peers")),
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let departures = reply.departures(3)?;
        inner.departed(room, &departures).await?;
        if created {
            let now_us = reply.int(4)?;
            let deadline = reply.int(5)?;
            let _: Value = inner
                .run(
                    inner
                        .on_globals(&inner.scripts.created)
                        .arg(room.as_str())
                        .arg(now_us)
                        .arg(deadline)
                        .arg(GLOBAL_TTL.as_millis() as u64),
                )
                .await?;
        }
        Ok(JoinOutcome { peers, departures })
    }

    pub async fn leave(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Vec<Departure>> {
        let inner = &self.inner;
        let reply: Value = inner
            .run(
                inner
                    .on_room(&inner.scripts.leave, &inner.keys.peers(room))
                    .arg(peer.to_string())
                    .arg(token.map(digest).unwrap_or_default())
                    .arg(inner.limits.mailbox_capacity)
                    .arg(inner.key_ttl_ms)
                    .arg(inner.limits.mailbox_max_bytes),
            )
            .await?;
        let reply = Reply::new(reply)?;
        match reply.status()? {
            "ok" => {}
            other => return Err(refusal(other, &reply, &inner.limits)?),
        }
        let departures = reply.departures(1)?;
        inner.departed(room, &departures).await?;
        if reply.int(2)? == 1 {
            inner.release(room, reply.int(3)?).await?;
        }
        Ok(departures)
    }

    pub async fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.exists(inner.keys.peers(room));
        pipe.hget(
            inner.keys.of_room(room.as_str(), "tokens"),
            token.map(digest).unwrap_or_default(),
        );
        let (exists, owner): (bool, Option<String>) = inner.query_pipe(&pipe).await?;
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
    ) -> ApiResult<Sent> {
        let inner = &self.inner;
        let limits = &inner.limits;
        let mut invocation = inner.on_room(&inner.scripts.send, &inner.keys.peers(room));
        invocation
            .arg(token.map(digest).unwrap_or_default())
            .arg(limits.mailbox_capacity)
            .arg(limits.send_rate_per_sec)
            .arg(limits.send_burst)
            .arg(inner.key_ttl_ms)
            .arg(limits.mailbox_max_bytes)
            .arg(limits.client_max_held_bytes)
            .arg(limits.max_held_bytes);
        for message in batch {
            invocation.arg(message.to.map(|to| to.to_string()).unwrap_or_default());
            let draft = &message.draft;
            let mut value =
                String::with_capacity(draft.kind().len() + 1 + draft.unsigned_body().len());
            value.push_str(draft.kind());
            value.push(' ');
            value.push_str(draft.unsigned_body());
            invocation.arg(value);
        }
        let reply: Value = inner.run(&invocation).await?;
        let reply = Reply::new(reply)?;
        match reply.status()? {
            "ok" => {}
            other => return Err(refusal(other, &reply, &inner.limits)?),
        }
        let accepted = reply.int(1)? as usize;
        let departures = reply.departures(2)?;
        inner.departed(room, &departures).await?;
        if reply.int(3)? == 1 {
            inner.release(room, reply.int(4)?).await?;
        }
        Ok(Sent {
            accepted,
            departures,
        })
    }

    pub async fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Reader> {
        let inner = &self.inner;
        let reply: Value = inner
            .run(
                inner
                    .on_room(&inner.scripts.authorize, &inner.keys.peers(room))
                    .arg(peer.to_string())
                    .arg(token.map(digest).unwrap_or_default())
                    .arg(inner.limits.peer_timeout.as_millis() as u64)
                    .arg(inner.key_ttl_ms),
            )
            .await?;
        let reply = Reply::new(reply)?;
        match reply.status()? {
            "ok" => Ok(Reader {
                inner: Arc::clone(inner),
                room: room.clone(),
                peer,
                peers_key: inner.keys.peers(room),
                peer_arg: peer.to_string(),
                pending_ack: AtomicU64::new(0),
                sent_ack: AtomicU64::new(0),
            }),
            other => Err(refusal(other, &reply, &inner.limits)?),
        }
    }

    pub async fn room(&self, room: &RoomName) -> ApiResult<Option<Vec<PeerInfo>>> {
        let inner = &self.inner;
        let mut command = redis::cmd("HGETALL");
        let records: Vec<(String, String)> =
            inner.query(command.arg(inner.keys.peers(room))).await?;
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
        let (exists, record): (bool, Option<String>) = inner.query_pipe(&pipe).await?;
        if !exists {
            return Err(Error::RoomNotFound);
        }
        let record = record.ok_or(Error::PeerNotFound)?;
        parse_record(&peer.to_string(), &record).map(|(_, info)| info)
    }

    /// Sweeps the rooms due, by Redis's clock.
    pub async fn sweep(&self) -> ApiResult<Vec<(RoomName, Departure)>> {
        let inner = &self.inner;
        let rooms: Vec<String> = inner
            .run(
                inner
                    .scripts
                    .due
                    .key(&inner.keys.due)
                    .key(&inner.keys.rooms)
                    .key(&inner.keys.clients)
                    .key(&inner.keys.client_rooms)
                    .key(&inner.keys.peer_count)
                    .arg(SWEEP_LIMIT)
                    .arg(GLOBAL_TTL.as_millis() as u64),
            )
            .await?;
        let mut gone = Vec::new();
        for name in rooms {
            let Ok(room) = RoomName::parse(&name) else {
                continue;
            };
            let reply: Value = inner
                .run(
                    inner
                        .on_room(&inner.scripts.sweep, &inner.keys.peers(&room))
                        .arg(inner.limits.mailbox_capacity)
                        .arg(inner.key_ttl_ms)
                        .arg(inner.limits.mailbox_max_bytes),
                )
                .await?;
            let reply = Reply::new(reply)?;
            let departures = reply.departures(0)?;
            inner.departed(&room, &departures).await?;
            let earliest = reply.int(1)?;
            if reply.int(2)? == 1 {
                inner.release(&room, reply.int(3)?).await?;
            } else if earliest >= 0 {
                let mut command = redis::cmd("ZADD");
                command
                    .arg(&inner.keys.due)
                    .arg("XX")
                    .arg(earliest)
                    .arg(room.as_str());
                let _: Value = inner.query(&command).await?;
            }
            gone.extend(departures.into_iter().map(|d| (room.clone(), d)));
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
        let (rooms, peers): (usize, Option<i64>) = inner.query_pipe(&pipe).await?;
        Ok((rooms, peers.unwrap_or(0).max(0) as usize))
    }
}

impl Inner {
    /// Runs a script, counting the round trip; any failure is `store_unavailable`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> ApiResult<T> {
        let mut connection = self.connection.clone();
        let result = invocation.invoke_async(&mut connection).await;
        self.account(result)
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> ApiResult<T> {
        let mut connection = self.connection.clone();
        let result = command.query_async(&mut connection).await;
        self.account(result)
    }

    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> ApiResult<T> {
        let mut connection = self.connection.clone();
        let result = pipe.query_async(&mut connection).await;
        self.account(result)
    }

    fn account<T>(&self, result: redis::RedisResult<T>) -> ApiResult<T> {
        self.metrics.store_round_trip(result.is_err());
        result.map_err(|error| {
            logging::warn(format_args!("redis: {}", error));
            Error::StoreUnavailable
        })
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
        self.release_clients(room, &clients).await
    }

    /// `lua/clients.lua`: one place given back per entry of `clients` (a client key, or "" for
    /// a peer not counted against an address).
    async fn release_clients(&self, room: &RoomName, clients: &[String]) -> ApiResult<()> {
        let mut invocation = self.scripts.clients.key(&self.keys.clients);
        invocation
            .key(&self.keys.client_rooms)
            .key(&self.keys.peer_count)
            .arg(GLOBAL_TTL.as_millis() as u64)
            .arg(room.as_str());
        for client in clients {
            invocation.arg(client);
        }
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    /// Room script `script` on the room whose peers hash is `peers`, with the held-bytes hash as
    /// its second key, as `lua/room.lua` takes them.
    fn on_room<'a>(&'a self, script: &'a Script, peers: &str) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(peers);
        invocation.key(&self.keys.held);
        invocation
    }

    /// `script` on the two deployment-wide keys, in the order `reserve`, `created` and `release`
    /// take them: the rooms, then the sweep index.
    fn on_globals<'a>(&'a self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&self.keys.rooms);
        invocation.key(&self.keys.due);
        invocation
    }

    /// Forgets an emptied room (unless it was created again since).
    async fn release(&self, room: &RoomName, emptied_us: i64) -> ApiResult<()> {
        let _: Value = self
            .run(
                self.on_globals(&self.scripts.release)
                    .arg(room.as_str())
                    .arg(emptied_us),
            )
            .await?;
        Ok(())
    }
}

/// A peer's mailbox in Redis, for its stream or poll.
pub struct Reader {
    inner: Arc<Inner>,
    room: RoomName,
    peer: PeerId,
    /// `KEYS[1]` and the peer id as the scripts take them, formatted once for every read.
    peers_key: String,
    peer_arg: String,
    /// The newest id the reader has delivered (0: none); sent with the next read, or by
    /// [`Reader::flush`] when there is none to come.
    pending_ack: AtomicU64,
    /// The newest id Redis has been told of.
    sent_ack: AtomicU64,
}

impl Reader {
    pub async fn subscribe(&self) -> ApiResult<crate::store::Wake> {
        let channel = self.inner.keys.wake(self.peer);
        self.inner.wakeups.subscribe(channel, &self.inner).await
    }

    pub async fn open_stream(&self, acknowledge: Option<u64>) -> ApiResult<(StreamTicket, u64)> {
        let (epoch, last) = self.open("stream", acknowledge).await?;
        Ok((StreamTicket(epoch), last))
    }

    /// Makes the caller the peer's one poll in flight (an older one, on any instance, reads
    /// `Replaced`), after acknowledging `acknowledge`.
    pub async fn open_poll(&self, acknowledge: u64) -> ApiResult<PollTicket> {
        self.pending_ack.fetch_max(acknowledge, Ordering::Relaxed);
        let (epoch, _) = self.open("poll", Some(acknowledge)).await?;
        self.sent_ack.fetch_max(acknowledge, Ordering::Relaxed);
        Ok(PollTicket(epoch))
    }

    /// Makes the caller the peer's newest reader of `kind` (`lua/open.lua`), after
    /// acknowledging `acknowledge`: its epoch, and the newest id.
    async fn open(&self, kind: &str, acknowledge: Option<u64>) -> ApiResult<(u64, u64)> {
        let inner = &self.inner;
        let reply: Value = inner
            .run(
                inner
                    .on_room(&inner.scripts.open, &self.peers_key)
                    .arg(&self.peer_arg)
                    .arg(acknowledge.map(|id| id.to_string()).unwrap_or_default())
                    .arg(inner.limits.replay_window)
                    .arg(inner.limits.replay_window_bytes)
                    .arg(kind),
            )
            .await?;
        let reply = Reply::new(reply)?;
        match reply.status()? {
            "ok" => Ok((reply.int(1)? as u64, reply.int(2)? as u64)),
            "closed" => Err(Error::PeerNotFound),
            other => Err(unexpected(other)),
        }
    }

    pub fn acknowledge(&self, id: u64) {
        self.pending_ack.fetch_max(id, Ordering::Relaxed);
    }

    /// What follows `cursor`: at most [`READ_LIMIT`] entries and, past the first, `max_bytes`
    /// bytes of envelopes.
    pub async fn read(
        &self,
        cursor: u64,
        ticket: Option<Ticket>,
        max_bytes: usize,
    ) -> ApiResult<Read> {
        let inner = &self.inner;
        let ack = self.pending_ack.load(Ordering::Relaxed);
        let unsent = ack > self.sent_ack.load(Ordering::Relaxed);
        let reply: Value = inner
            .run(
                inner
                    .on_room(&inner.scripts.read, &self.peers_key)
                    .arg(&self.peer_arg)
                    .arg(cursor)
                    .arg(if unsent {
                        ack.to_string()
                    } else {
                        String::new()
                    })
                    .arg(match ticket {
                        Some(Ticket::Stream(StreamTicket(epoch))) => epoch.to_string(),
                        _ => String::new(),
                    })
                    .arg(inner.limits.replay_window)
                    .arg(READ_LIMIT)
                    .arg(inner.limits.replay_window_bytes)
                    .arg(max_bytes)
                    .arg(match ticket {
                        Some(Ticket::Poll(PollTicket(epoch))) => epoch.to_string(),
                        _ => String::new(),
                    }),
            )
            .await?;
        self.sent_ack.fetch_max(ack, Ordering::Relaxed);
        let mut reply = Reply::new(reply)?;
        let batch = match reply.status()? {
            "ok" => {
                let last_id = reply.int(1)? as u64;
                let reset = match reply.string(2)? {
                    "" => None,
                    "expired" => Some(ResetReason::Expired),
                    "ahead" => Some(ResetReason::Ahead),
                    other => return Err(unexpected(other)),
                };
                let first = reply.int(3)? as u64;
                let entries = reply
                    .take_strings(4)?
                    .into_iter()
                    .zip(first..)
                    .map(|(mut value, id)| {
                        // `<type> <envelope>`: the type is cut off the front in place, so the
                        // envelope keeps the bytes Redis sent.
                        let space = value.find(' ').ok_or_else(|| unexpected(&value))?;
                        let kind: String = value.drain(..=space).collect();
                        Ok(Entry {
                            id,
                            message: EncodedMessage::stored(kind.trim_end(), value),
                        })
                    })
                    .collect::<ApiResult<Vec<_>>>()?;
                Read::Batch(Batch {
                    reset,
                    entries,
                    last_id,
                })
            }
            "closed" => Read::Closed,
            "replaced" => Read::Replaced,
            other => return Err(unexpected(other)),
        };
        Ok(batch)
    }

    /// Sends an acknowledgement that no read has carried yet.
    pub async fn flush(&self) -> ApiResult<()> {
        let ack = self.pending_ack.load(Ordering::Relaxed);
        if ack <= self.sent_ack.load(Ordering::Relaxed) {
            return Ok(());
        }
        let inner = &self.inner;
        let _: i64 = inner
            .run(
                inner
                    .on_room(&inner.scripts.ack, &self.peers_key)
                    .arg(&self.peer_arg)
                    .arg(ack)
                    .arg(inner.limits.replay_window)
                    .arg(inner.limits.replay_window_bytes),
            )
            .await?;
        self.sent_ack.fetch_max(ack, Ordering::Relaxed);
        Ok(())
    }

    pub fn listen(&self) -> Listening {
        Listening::new(Arc::clone(&self.inner), self.room.clone(), self.peer)
    }
}

/// The client that both of the store's connections (commands, wake-ups) are made from: over
/// TLS for a `rediss://` `url` (`tls.rs`, with the `redis-tls` feature), so neither connection
/// can go plain.
fn open(url: &str, tls_ca_file: Option<&Path>) -> Result<redis::Client, String> {
    #[cfg(feature = "redis-tls")]
    if url.starts_with("rediss://") {
        return tls::client(url, tls_ca_file);
    }
    // A CA file without rediss:// is refused by `Config::validate`, the one place of that rule.
    #[cfg(not(feature = "redis-tls"))]
    let _ = tls_ca_file;
    redis::Client::open(url).map_err(|error| format!("signpost.redis_url is not usable: {error}"))
}

/// SHA-256 of a peer token, in hex: what Redis keeps instead of the token, so that a look at
/// Redis (or a dump of it) reveals no credential, and comparing digests leaks nothing useful
/// about the token through timing.
///
/// The first 128 bits are kept: as hard to find a token for as the whole, and half the bytes in
/// Redis for every peer.
fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(32);
    for byte in &hash[..16] {
        hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    hex
}

/// A message as the room scripts keep it: `<type> <envelope without id>`.
fn stored(message: &EncodedMessage) -> String {
    format!("{} {}", message.kind(), message.body())
}

/// A peer's name and meta as Redis keeps them: the peer id is the record's field.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Box<serde_json::value::RawValue>>,
}

/// The peer `id` from its stored name and meta.
fn parse_info(id: &str, info: &str) -> ApiResult<PeerInfo> {
    let malformed = || Error::Internal("a peer record in Redis is malformed");
    let peer_id = PeerId::parse(id).ok_or_else(malformed)?;
    let StoredInfo { name, meta } = serde_json::from_str(info).map_err(|_| malformed())?;
    Ok(PeerInfo {
        peer_id,
        name,
        meta,
    })
}

/// Peer `id`'s record, `<join seq>\n<token digest>\n<client key>\n<name and meta JSON>` → (seq,
/// info).
fn parse_record(id: &str, record: &str) -> ApiResult<(u64, PeerInfo)> {
    let mut parts = record.splitn(4, '\n');
    let (Some(seq), Some(_digest), Some(_client), Some(info)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Internal("a peer record in Redis is malformed"));
    };
    let seq = seq
        .parse()
        .map_err(|_| Error::Internal("a peer record in Redis is malformed"))?;
    Ok((seq, parse_info(id, info)?))
}

/// A reply the scripts were not written to give: a bug, or keys written by something else.
fn unexpected(what: &str) -> Error {
    logging::warn(format_args!("redis: unexpected script reply {what:?}"));
    Error::Internal("the shared store gave an unexpected reply")
}

/// The error a script refused with; `limits` are the ones it was given.
fn refusal(code: &str, reply: &Reply, limits: &Limits) -> ApiResult<Error> {
    Ok(match code {
        "room_not_found" => Error::RoomNotFound,
        "peer_not_found" => Error::PeerNotFound,
        "missing_token" => Error::MissingToken,
        "invalid_token" => Error::InvalidToken,
        "wrong_peer" => Error::WrongPeer,
        "self_recipient" => Error::SelfRecipient {
            index: reply.int(1)? as usize,
        },
        "unknown_recipient" => Error::UnknownRecipient {
            index: reply.int(1)? as usize,
        },
        "rate_limited" => Error::RateLimited {
            retry_after: Duration::from_millis(reply.int(1)?.max(0) as u64),
        },
        "too_many_bytes_held" => Error::TooManyBytesHeld {
            limit: limits.client_max_held_bytes,
        },
        "server_full" => Error::ServerFull,
        other => unexpected(other),
    })
}

/// A script's reply: an array whose first element is a status (or whatever the script says).
struct Reply(Vec<Value>);

impl Reply {
    fn new(value: Value) -> ApiResult<Self> {
        match value {
            Value::Array(items) => Ok(Self(items)),
            other => Err(unexpected(&format!("{other:?}"))),
        }
    }

    fn get(&self, index: usize) -> ApiResult<&Value> {
        self.0
            .get(index)
            .ok_or_else(|| unexpected("a reply with too few elements"))
    }

    fn string(&self, index: usize) -> ApiResult<&str> {
        match self.get(index)? {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).map_err(|_| unexpected("bytes")),
            Value::SimpleString(text) => Ok(text),
            other => Err(unexpected(&format!("{other:?}"))),
        }
    }

    fn status(&self) -> ApiResult<&str> {
        self.string(0)
    }

    fn int(&self, index: usize) -> ApiResult<i64> {
        match self.get(index)? {
            Value::Int(n) => Ok(*n),
            other => Err(unexpected(&format!("{other:?}"))),
        }
    }

    fn strings(&self, index: usize) -> ApiResult<Vec<String>> {
        match self.get(index)? {
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::BulkString(bytes) => {
                        String::from_utf8(bytes.clone()).map_err(|_| unexpected("bytes"))
                    }
                    other => Err(unexpected(&format!("{other:?}"))),
                })
                .collect(),
            other => Err(unexpected(&format!("{other:?}"))),
        }
    }

    /// [`strings`](Self::strings), moving the bytes out of the reply instead of copying them.
    fn take_strings(&mut self, index: usize) -> ApiResult<Vec<String>> {
        let Some(Value::Array(items)) = self.0.get_mut(index) else {
            return Err(unexpected("a reply without the expected array"));
        };
        std::mem::take(items)
            .into_iter()
            .map(|item| match item {
                Value::BulkString(bytes) => {
                    String::from_utf8(bytes).map_err(|_| unexpected("bytes"))
                }
                other => Err(unexpected(&format!("{other:?}"))),
            })
            .collect()
    }

    fn departures(&self, index: usize) -> ApiResult<Vec<Departure>> {
        let flat = self.strings(index)?;
        flat.chunks(3)
            .map(|triple| match triple {
                [peer, reason, client] => Ok(Departure {
                    peer: PeerId::parse(peer).ok_or_else(|| unexpected(peer))?,
                    reason: LeaveReason::parse(reason).ok_or_else(|| unexpected(reason))?,
                    client: client.parse().ok(),
                }),
                _ => Err(unexpected("an odd departure list")),
            })
            .collect()
    }
}
