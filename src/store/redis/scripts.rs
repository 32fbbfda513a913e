//! The scripts, and one typed call per script: each call builds the script's keys and
//! arguments and reads its reply into a type of its own ([`Admission`], [`JoinAnswer`],
//! [`Removed`], …; [`Refusal`] for the error codes the room scripts answer), so that no caller
//! reads a reply by position. A reply's shape is read here, once, next to the call and to the
//! header of its Lua file (keys, arguments, reply), which it follows.
//!
//! A reply of the wrong shape is [`unexpected`]: an error, never a panic.

use std::time::Duration;

use redis::{Script, ScriptInvocation, Value};

use crate::error::{ApiResult, Error};
use crate::idempotency::{Fingerprint, IdempotencyKey};
use crate::identity::{PeerId, RoomName};
use crate::mailbox::{Batch, Entry, PollTicket, Read, ResetReason, StreamTicket, Ticket};
use crate::message::EncodedMessage;
use crate::store::{Departure, LeaveReason, Limits, NewPeer, Outgoing, PeerInfo};

use super::connection::unexpected;
use super::keys::Keys;
use super::records::{digest, parse_info, stored, StoredInfo};
use super::Inner;

/// Most entries one read returns (besides its byte budget); a reader with more waiting reads
/// again at once.
pub(super) const READ_LIMIT: usize = 256;
/// Rooms one sweep tick looks at; the rest wait for the next tick.
const SWEEP_LIMIT: usize = 256;
/// Expiry of the global keys: refreshed by every sweep tick, so they outlive instances that
/// crashed by this much and no more.
const GLOBAL_TTL: Duration = Duration::from_secs(3600);
/// Senders' client keys an instance keeps in a Redis Cluster ([`sender_client`]): about 100
/// bytes each, so at most a few MB.
const SENDERS_KEPT: usize = 50_000;

// ---- The room library ----
//
// The room scripts are one library of Redis functions: `lua/room.lua` (the key names, the
// mailbox state's codec, the functions they share), then each script's own file as the body of
// a function registered under its name. Redis runs a library's top level once, when it is
// loaded (`FUNCTION LOAD`), and a call (`FCALL`) runs only its function, which starts by
// setting room.lua's per-call values (`begin`): an `EVALSHA` of room.lua and a script ran the
// whole of room.lua again at every call (docs/BENCHMARKS.md, "Redis's instructions per
// message"). In a Redis Cluster's build each function answers its reply beside the held bytes
// it charged and released (`{reply, {client key, delta, ...}}`, room.lua's `held_reply`),
// which [`run_room`] applies.
//
// The library's name carries a hash of its code, so that instances of two versions sharing a
// Redis (a rolling upgrade) each call their own functions. It is loaded by the first call that
// finds it missing (a new Redis, or one restarted empty), on every master of a cluster, and
// replicas receive it like any write, so a promoted replica has it. A library of an older
// version stays in Redis until `FUNCTION DELETE` (a few tens of kB).

/// Each room script's file, under the name of its function in the library.
const ROOM_SCRIPTS: [(&str, &str); 9] = [
    ("join", include_str!("lua/join.lua")),
    ("leave", include_str!("lua/leave.lua")),
    ("send", include_str!("lua/send.lua")),
    ("authorize", include_str!("lua/authorize.lua")),
    ("open", include_str!("lua/open.lua")),
    ("read", include_str!("lua/read.lua")),
    ("ack", include_str!("lua/ack.lua")),
    ("touch", include_str!("lua/touch.lua")),
    ("sweep", include_str!("lua/sweep.lua")),
];

/// The room library, built for a Redis Cluster or not.
pub(super) struct Library {
    /// `FUNCTION LOAD <code>`.
    pub(super) load: redis::Cmd,
    /// The library's name, `signpost_<hash>`: each function is `<name>_<script>`.
    name: String,
}

impl Library {
    fn new(cluster: bool) -> Self {
        const NAME: &str = "@LIBRARY@";
        let mut code = format!("#!lua name={NAME}\n{}\n", include_str!("lua/room.lua"));
        for (function, body) in ROOM_SCRIPTS {
            code.push_str(&format!(
                "redis.register_function('{NAME}_{function}', function(keys, args)\nbegin(keys, args)\n"
            ));
            if cluster {
                code.push_str(&format!(
                    "local reply = (function()\n{body}\nend)()\n\
                     if reply == nil then reply = false end\n\
                     return {{reply, held_reply()}}\n"
                ));
            } else {
                code.push_str(body);
                code.push('\n');
            }
            code.push_str("end)\n");
        }
        // A hash of the code as built (SHA-1, which the redis crate computes for scripts).
        let name = format!("signpost_{}", &Script::new(&code).get_hash()[..16]);
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg(code.replace(NAME, &name));
        Self { load, name }
    }

    /// `FCALL` of the function for `script`, with its keys; the caller adds the arguments.
    fn call(&self, script: &str, keys: &[&str]) -> redis::Cmd {
        let mut call = redis::cmd("FCALL");
        call.arg(format!("{}_{script}", self.name))
            .arg(keys.len())
            .arg(keys);
        call
    }
}

/// The room library, and the other scripts, hashed once: `EVALSHA` after the first use,
/// reloaded on `NOSCRIPT` (a Redis restarted empty forgets them).
pub(super) struct Scripts {
    /// Built for a Redis Cluster: the room scripts take no held-bytes hash and answer what they
    /// charged beside their reply (see [`run_room`]).
    cluster: bool,
    pub(super) library: Library,
    reserve: Script,
    created: Script,
    release: Script,
    due: Script,
    clients: Script,
    joins: Script,
    charge_held: Script,
    settle_held: Script,
    sender: Script,
}

impl Scripts {
    /// The scripts, built for a Redis Cluster when `cluster`.
    pub(super) fn new(cluster: bool) -> Self {
        Self {
            cluster,
            library: Library::new(cluster),
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
            charge_held: Script::new(include_str!("lua/charge_held.lua")),
            settle_held: Script::new(include_str!("lua/settle_held.lua")),
            sender: Script::new(include_str!("lua/sender.lua")),
        }
    }
}

/// Room script `script` (a function of the room library) on the room whose peers hash is
/// `peers`, with the held-bytes hash as its second key (not in a Redis Cluster), as
/// `lua/room.lua` takes them; the caller adds the arguments.
pub(super) fn on_room(inner: &Inner, script: &str, peers: &str) -> redis::Cmd {
    if inner.scripts.cluster {
        inner.scripts.library.call(script, &[peers])
    } else {
        inner
            .scripts
            .library
            .call(script, &[peers, &inner.keys.held])
    }
}

// ---- Held bytes in a Redis Cluster ----
//
// The held-bytes hash (`client_max_held_bytes`, `max_held_bytes`) is deployment-wide, on the
// `{<prefix>:global}` slot, and a room script is on its room's: in a Redis Cluster no script
// may touch both. So there a room script returns what it charged and released beside its reply,
// and the instance applies it to the hash (`settle_held.lua`); a send is charged before its
// script, at its most, against both limits (`charge_held.lua`), and the script gives back
// what it did not store. The limits stay exact (the check and the charge are one step on the
// hash's slot); the cost is a round trip to that slot's master per send (two when the charge
// must be evened out: a broadcast, an eviction, a refusal), and per read that frees bytes. A
// send whose script fails gives its charge back (it most likely never ran); an instance that
// dies between the steps, or a settlement that fails, leaves the counts off until the hash
// expires (an hour after the last instance stops: `due.lua` keeps it).

/// Runs a room script and returns its reply; in a Redis Cluster, also applies the held bytes
/// it answered beside it (best effort: a failure there is logged, and the script's answer
/// stands, since the script committed).
pub(super) async fn run_room(inner: &Inner, call: &redis::Cmd) -> ApiResult<Value> {
    let value: Value = inner
        .connection
        .call(call, &inner.scripts.library.load)
        .await?;
    if !inner.scripts.cluster {
        return Ok(value);
    }
    let Value::Array(mut pair) = value else {
        return Err(unexpected(
            "a cluster room script's reply without its held bytes",
        ));
    };
    let (Some(held), Some(reply), true) = (pair.pop(), pair.pop(), pair.is_empty()) else {
        return Err(unexpected("a cluster room script's reply of another shape"));
    };
    let deltas = Reply::new(held)?.deltas()?;
    if !deltas.is_empty() {
        if let Err(error) = settle_held(inner, &deltas).await {
            crate::logging::warn(format_args!(
                "redis: held bytes not settled ({error:?}): counts stay too high until they expire"
            ));
        }
    }
    Ok(reply)
}

/// `lua/settle_held.lua`: applies `deltas` (client key, bytes) to the held-bytes hash.
async fn settle_held(inner: &Inner, deltas: &[(String, i64)]) -> ApiResult<()> {
    let mut invocation = inner.scripts.settle_held.key(&inner.keys.held);
    invocation.arg(inner.key_ttl_ms);
    for (client, delta) in deltas {
        invocation.arg(client).arg(*delta);
    }
    let _: Value = inner.connection.run(&invocation).await?;
    Ok(())
}

/// A send's charge in a Redis Cluster, made before its script: `(client key, bytes, refusal)`
/// as send.lua takes them (ARGV 13-15).
async fn charge_send(
    inner: &Inner,
    room: &RoomName,
    digest: &str,
    batch: &[Outgoing],
) -> ApiResult<(String, u64, &'static str)> {
    let limits = &inner.limits;
    let broadcast = batch.iter().any(|message| message.to.is_none());
    let Some((client, peers)) = sender_client(inner, room, digest, broadcast).await? else {
        // No such token: the script answers why, before any charge matters.
        return Ok((String::new(), 0, ""));
    };
    // A peer that joins between this count and the script is charged by the settlement after
    // (the limit may then be passed by that one copy of the batch).
    let everyone = peers.saturating_sub(1) as u64;
    let bytes: u64 = batch
        .iter()
        .map(|message| {
            let recipients = if message.to.is_some() { 1 } else { everyone };
            message.draft.signed_len() as u64 * recipients
        })
        .sum();
    let refusal: String = inner
        .connection
        .run(
            inner
                .scripts
                .charge_held
                .key(&inner.keys.held)
                .arg(&client)
                .arg(bytes)
                .arg(limits.client_max_held_bytes)
                .arg(limits.max_held_bytes)
                .arg(inner.key_ttl_ms),
        )
        .await?;
    Ok(match refusal.as_str() {
        "" => (client, bytes, ""),
        "too_many_bytes_held" => (client, 0, "too_many_bytes_held"),
        "server_full" => (client, 0, "server_full"),
        other => return Err(unexpected(other)),
    })
}

/// The client key of the peer whose token has `digest` (`lua/sender.lua`), kept per digest (a
/// peer's client key never changes), and, when `count` (a broadcast), the room's peers now (0
/// otherwise). `None` when the token is no peer's.
async fn sender_client(
    inner: &Inner,
    room: &RoomName,
    digest: &str,
    count: bool,
) -> ApiResult<Option<(String, usize)>> {
    if !count {
        if let Some(client) = inner.senders.lock().get(digest) {
            return Ok(Some((client.clone(), 0)));
        }
    }
    let sender: Option<(String, usize)> = inner
        .connection
        .run(inner.scripts.sender.key(inner.keys.peers(room)).arg(digest))
        .await?;
    if let Some((client, _)) = &sender {
        let mut senders = inner.senders.lock();
        // A bound on memory: forgetting costs one round trip per sender, once.
        if senders.len() >= SENDERS_KEPT {
            senders.clear();
        }
        senders.insert(digest.to_owned(), client.clone());
    }
    Ok(sender)
}

/// `script` on the two deployment-wide keys, in the order `reserve`, `created` and `release`
/// take them: the rooms, then the sweep index.
fn on_globals<'a>(keys: &'a Keys, script: &'a Script) -> ScriptInvocation<'a> {
    let mut invocation = script.key(&keys.rooms);
    invocation.key(&keys.due);
    invocation
}

fn global_ttl_ms() -> u64 {
    GLOBAL_TTL.as_millis() as u64
}

// ---- joins.lua, reserve.lua, join.lua, created.lua: a join ----

/// `lua/joins.lua`: charges a join refused before it reached the store to `client`'s bucket;
/// how long until a join is allowed when the bucket is empty.
pub(super) async fn charge_join(inner: &Inner, client: &str) -> ApiResult<Option<Duration>> {
    let wait_ms: u64 = inner
        .connection
        .run(
            inner
                .scripts
                .joins
                .key(inner.keys.join_bucket(client))
                .arg(inner.limits.join_rate_per_sec)
                .arg(inner.limits.join_burst),
        )
        .await?;
    Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
}

/// What `lua/reserve.lua` decided about a join, on the deployment-wide keys.
#[derive(Debug, PartialEq)]
pub(super) enum Admission {
    /// Admitted and counted; `reserved_us` is when this join reserved its new room (µs), 0 when
    /// the room existed.
    Admitted {
        reserved_us: i64,
    },
    /// The address's join rate: answered as it is, before anything else.
    TooManyJoins {
        retry_after: Duration,
    },
    TooManyRooms,
    TooManyPeersForClient,
    TooManyRoomsForClient,
}

/// `lua/reserve.lua`: charges the join to `client`'s bucket (`None`: a join not counted
/// against an address) and admits it against `max_rooms` and the per-address counts.
pub(super) async fn reserve(
    inner: &Inner,
    room: &RoomName,
    client: Option<&str>,
) -> ApiResult<Admission> {
    let limits = &inner.limits;
    let keys = &inner.keys;
    let client = client.unwrap_or_default();
    let reply: Value = inner
        .connection
        .run(
            on_globals(keys, &inner.scripts.reserve)
                .key(&keys.clients)
                .key(&keys.client_rooms)
                .key(&keys.peer_count)
                .key(keys.join_bucket(client))
                .arg(room.as_str())
                .arg(limits.max_rooms)
                .arg(global_ttl_ms())
                .arg(limits.peer_timeout.as_millis() as u64)
                .arg(client)
                .arg(limits.max_peers_per_client)
                .arg(limits.max_rooms_per_client)
                .arg(limits.join_rate_per_sec)
                .arg(limits.join_burst),
        )
        .await?;
    Admission::parse(reply)
}

impl Admission {
    fn parse(reply: Value) -> ApiResult<Self> {
        let reply = Reply::new(reply)?;
        Ok(match reply.status()? {
            "ok" => Self::Admitted {
                reserved_us: reply.int(1)?,
            },
            "too_many_joins" => Self::TooManyJoins {
                retry_after: Duration::from_millis(reply.int(1)?.max(1) as u64),
            },
            "too_many_rooms" => Self::TooManyRooms,
            "too_many_peers_for_client" => Self::TooManyPeersForClient,
            "too_many_rooms_for_client" => Self::TooManyRoomsForClient,
            other => return Err(unexpected(other)),
        })
    }
}

/// What `lua/join.lua` answered.
#[derive(Debug)]
pub(super) enum JoinAnswer {
    Joined(JoinReply),
    /// The peer id is in the room: a resumed join may not replace it.
    PeerPresent,
    RoomFull,
}

/// A join done.
#[derive(Debug)]
pub(super) struct JoinReply {
    /// The peers there before, in join order.
    pub(super) peers: Vec<PeerInfo>,
    /// The peers the announcement evicted.
    pub(super) departures: Vec<Departure>,
    /// Set when the join created the room, which [`created`] then records.
    pub(super) created: Option<Created>,
    /// When the room was emptied (µs), for [`release`]: the announcement's evictions cascaded
    /// until no peer was left, the joiner included.
    pub(super) emptied_us: Option<i64>,
}

/// When a room was created, as [`created`] takes it.
#[derive(Debug, PartialEq)]
pub(super) struct Created {
    /// Redis's clock when the room was created (µs).
    now_us: i64,
    /// The first peer's presence deadline (ms).
    deadline_ms: i64,
}

/// `lua/join.lua`: adds `peer` (joined from `client`) to `room` and announces it to the others.
pub(super) async fn join(
    inner: &Inner,
    room: &RoomName,
    peer: &NewPeer,
    client: Option<&str>,
    announcement: &EncodedMessage,
) -> ApiResult<JoinAnswer> {
    let limits = &inner.limits;
    let info = StoredInfo {
        name: peer.info.name.clone(),
        meta: peer.info.meta.clone(),
    };
    let info = serde_json::to_string(&info).map_err(|_| Error::Internal("peer info"))?;
    let reply: Value = run_room(
        inner,
        on_room(inner, "join", &inner.keys.peers(room))
            .arg(peer.info.peer_id.to_string())
            .arg(digest(peer.token.reveal()))
            .arg(client.unwrap_or_default())
            .arg(info)
            .arg(stored(announcement))
            .arg(limits.max_peers_per_room)
            .arg(limits.mailbox_capacity)
            .arg(limits.send_burst)
            .arg(limits.peer_timeout.as_millis() as u64)
            .arg(inner.key_ttl_ms)
            .arg(limits.mailbox_max_bytes),
    )
    .await?;
    JoinAnswer::parse(reply)
}

impl JoinAnswer {
    fn parse(reply: Value) -> ApiResult<Self> {
        let mut reply = Reply::new(reply)?;
        match reply.status()? {
            "ok" => {}
            "peer_present" => return Ok(Self::PeerPresent),
            "room_full" => return Ok(Self::RoomFull),
            other => return Err(unexpected(other)),
        }
        let created = reply.int(1)? == 1;
        let peers = reply
            .take_strings(2)?
            .chunks(2)
            .map(|pair| match pair {
                [id, info] => parse_info(id, info),
                _ => Err(unexpected("an odd list of peers")),
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let departures = reply.departures(3)?;
        let emptied_us = if reply.int(6)? == 1 {
            Some(reply.int(4)?)
        } else {
            None
        };
        let created = if created {
            Some(Created {
                now_us: reply.int(4)?,
                deadline_ms: reply.int(5)?,
            })
        } else {
            None
        };
        Ok(Self::Joined(JoinReply {
            peers,
            departures,
            created,
            emptied_us,
        }))
    }
}

/// `lua/created.lua`: records a room the join created in the rooms and the sweep index.
pub(super) async fn created(inner: &Inner, room: &RoomName, created: &Created) -> ApiResult<()> {
    let _: Value = inner
        .connection
        .run(
            on_globals(&inner.keys, &inner.scripts.created)
                .arg(room.as_str())
                .arg(created.now_us)
                .arg(created.deadline_ms)
                .arg(global_ttl_ms()),
        )
        .await?;
    Ok(())
}

// ---- The error codes of leave.lua, send.lua and authorize.lua ----

/// An error code a room script refused with.
#[derive(Debug, PartialEq)]
pub(super) enum Refusal {
    RoomNotFound,
    PeerNotFound,
    MissingToken,
    InvalidToken,
    WrongPeer,
    /// The batch's message at `index` is addressed to its sender.
    SelfRecipient {
        index: usize,
    },
    /// The batch's message at `index` is addressed to no peer of the room.
    UnknownRecipient {
        index: usize,
    },
    RateLimited {
        retry_after: Duration,
    },
    TooManyBytesHeld,
    ServerFull,
    /// Another batch was sent under this idempotency key within the window.
    IdempotencyKeyReused,
}

impl Refusal {
    /// The refusal whose code is `code`, at the head of `reply`.
    fn parse(code: &str, reply: &Reply) -> ApiResult<Self> {
        Ok(match code {
            "room_not_found" => Self::RoomNotFound,
            "peer_not_found" => Self::PeerNotFound,
            "missing_token" => Self::MissingToken,
            "invalid_token" => Self::InvalidToken,
            "wrong_peer" => Self::WrongPeer,
            "self_recipient" => Self::SelfRecipient {
                index: reply.int(1)? as usize,
            },
            "unknown_recipient" => Self::UnknownRecipient {
                index: reply.int(1)? as usize,
            },
            "rate_limited" => Self::RateLimited {
                retry_after: Duration::from_millis(reply.int(1)?.max(0) as u64),
            },
            "too_many_bytes_held" => Self::TooManyBytesHeld,
            "server_full" => Self::ServerFull,
            "idempotency_key_reused" => Self::IdempotencyKeyReused,
            other => return Err(unexpected(other)),
        })
    }

    /// The error answered; `limits` are the ones the script was given.
    fn error(self, limits: &Limits) -> Error {
        match self {
            Self::RoomNotFound => Error::RoomNotFound,
            Self::PeerNotFound => Error::PeerNotFound,
            Self::MissingToken => Error::MissingToken,
            Self::InvalidToken => Error::InvalidToken,
            Self::WrongPeer => Error::WrongPeer,
            Self::SelfRecipient { index } => Error::SelfRecipient { index },
            Self::UnknownRecipient { index } => Error::UnknownRecipient { index },
            Self::RateLimited { retry_after } => Error::RateLimited { retry_after },
            Self::TooManyBytesHeld => Error::TooManyBytesHeld {
                limit: limits.client_max_held_bytes,
            },
            Self::ServerFull => Error::ServerFull,
            Self::IdempotencyKeyReused => Error::IdempotencyKeyReused,
        }
    }
}

/// A room script's reply: `"ok"` and what follows, or a [`Refusal`].
fn ok_or_refusal(reply: Value) -> ApiResult<Result<Reply, Refusal>> {
    let reply = Reply::new(reply)?;
    match reply.status()? {
        "ok" => Ok(Ok(reply)),
        code => Ok(Err(Refusal::parse(code, &reply)?)),
    }
}

// ---- leave.lua, send.lua, sweep.lua: peers removed ----

/// A leave done, or a send's removals: who it evicted, and whether it emptied the room.
#[derive(Debug, PartialEq)]
pub(super) struct Removed {
    pub(super) departures: Vec<Departure>,
    /// When the room was emptied (µs, Redis's clock), for [`release`]: `None` while it has
    /// peers.
    pub(super) emptied_us: Option<i64>,
}

/// A send done.
#[derive(Debug, PartialEq)]
pub(super) struct Delivered {
    /// The batch's messages accepted.
    pub(super) accepted: usize,
    /// The recipients the batch overflowed, evicted.
    pub(super) removed: Removed,
    /// A retry under a remembered idempotency key: nothing was appended, `accepted` is the
    /// first send's and `removed` is empty.
    pub(super) replayed: bool,
}

/// `lua/leave.lua`: removes `peer` at its own request (`token` must be its own).
pub(super) async fn leave(
    inner: &Inner,
    room: &RoomName,
    peer: PeerId,
    token: Option<&str>,
) -> ApiResult<Removed> {
    let reply: Value = run_room(
        inner,
        on_room(inner, "leave", &inner.keys.peers(room))
            .arg(peer.to_string())
            .arg(token.map(digest).unwrap_or_default())
            .arg(inner.limits.mailbox_capacity)
            .arg(inner.key_ttl_ms)
            .arg(inner.limits.mailbox_max_bytes),
    )
    .await?;
    Removed::parse(reply)?.map_err(|refusal| refusal.error(&inner.limits))
}

impl Removed {
    /// `{"ok", {departures}, emptied (0/1), now (µs)}` or a refusal.
    fn parse(reply: Value) -> ApiResult<Result<Self, Refusal>> {
        let mut reply = match ok_or_refusal(reply)? {
            Ok(reply) => reply,
            Err(refusal) => return Ok(Err(refusal)),
        };
        Ok(Ok(Self {
            departures: reply.departures(1)?,
            emptied_us: reply.emptied(2)?,
        }))
    }
}

/// `lua/send.lua`: sends `batch` from the peer whose token is `token`, under the idempotency
/// `key` if any.
pub(super) async fn send(
    inner: &Inner,
    room: &RoomName,
    token: Option<&str>,
    batch: &[Outgoing],
    key: Option<&IdempotencyKey>,
) -> ApiResult<Delivered> {
    let limits = &inner.limits;
    let digest = token.map(digest).unwrap_or_default();
    let (charged_client, charged, charge_refusal) = if inner.scripts.cluster {
        charge_send(inner, room, &digest, batch).await?
    } else {
        (String::new(), 0, "")
    };
    let mut invocation = on_room(inner, "send", &inner.keys.peers(room));
    invocation
        .arg(&digest)
        .arg(limits.mailbox_capacity)
        .arg(limits.send_rate_per_sec)
        .arg(limits.send_burst)
        .arg(inner.key_ttl_ms)
        .arg(limits.mailbox_max_bytes)
        .arg(limits.client_max_held_bytes)
        .arg(limits.max_held_bytes);
    // Without a key: two empty arguments and two numbers, which the script does not look at.
    match key {
        Some(key) => invocation
            .arg(key.as_str())
            .arg(Fingerprint::of(batch.iter().map(|message| (message.to, &message.draft))).hex()),
        None => invocation.arg("").arg(""),
    };
    invocation
        .arg(limits.idempotency_window.as_millis() as u64)
        .arg(limits.idempotency_keys_per_peer)
        .arg(&charged_client)
        .arg(if inner.scripts.cluster {
            charged.to_string()
        } else {
            String::new()
        })
        .arg(charge_refusal);
    for message in batch {
        invocation.arg(message.to.map(|to| to.to_string()).unwrap_or_default());
        let draft = &message.draft;
        let mut value = String::with_capacity(draft.kind().len() + 1 + draft.unsigned_body().len());
        value.push_str(draft.kind());
        value.push(' ');
        value.push_str(draft.unsigned_body());
        invocation.arg(value);
    }
    let reply = match run_room(inner, &invocation).await {
        Ok(reply) => reply,
        Err(error) => {
            // Most likely the script never ran (its node is gone): give the charge back, best
            // effort. Had it run, what it stored is counted too low until it is read or
            // dropped (a count never goes below 0), rather than too high for good.
            if charged > 0 {
                let _ = settle_held(inner, &[(charged_client, -(charged as i64))]).await;
            }
            return Err(error);
        }
    };
    Delivered::parse(reply)?.map_err(|refusal| refusal.error(limits))
}

impl Delivered {
    /// `{"ok", accepted, {departures}, emptied (0/1), now (µs)[, "replayed"]}` or a refusal.
    fn parse(reply: Value) -> ApiResult<Result<Self, Refusal>> {
        let mut reply = match ok_or_refusal(reply)? {
            Ok(reply) => reply,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let replayed = match reply.0.len() {
            5 => false,
            6 if reply.string(5)? == "replayed" => true,
            _ => return Err(unexpected("a send reply of another shape")),
        };
        Ok(Ok(Self {
            accepted: reply.int(1)? as usize,
            removed: Removed {
                departures: reply.departures(2)?,
                emptied_us: reply.emptied(3)?,
            },
            replayed,
        }))
    }
}

/// What `lua/sweep.lua` did to a room.
#[derive(Debug, PartialEq)]
pub(super) struct Swept {
    /// The peers timed out.
    pub(super) departures: Vec<Departure>,
    /// The earliest presence deadline left (ms); `None` when the room is gone.
    pub(super) earliest_ms: Option<i64>,
    /// When the sweep emptied the room (µs), for [`release`].
    pub(super) emptied_us: Option<i64>,
}

/// `lua/due.lua`: the rooms whose earliest deadline has passed, by Redis's clock.
pub(super) async fn due(inner: &Inner) -> ApiResult<Vec<String>> {
    let keys = &inner.keys;
    inner
        .connection
        .run(
            inner
                .scripts
                .due
                .key(&keys.due)
                .key(&keys.rooms)
                .key(&keys.clients)
                .key(&keys.client_rooms)
                .key(&keys.peer_count)
                .key(&keys.held)
                .arg(SWEEP_LIMIT)
                .arg(global_ttl_ms()),
        )
        .await
}

/// `lua/sweep.lua`: times out the peers of `room` whose deadline has passed.
pub(super) async fn sweep(inner: &Inner, room: &RoomName) -> ApiResult<Swept> {
    let reply: Value = run_room(
        inner,
        on_room(inner, "sweep", &inner.keys.peers(room))
            .arg(inner.limits.mailbox_capacity)
            .arg(inner.key_ttl_ms)
            .arg(inner.limits.mailbox_max_bytes),
    )
    .await?;
    Swept::parse(reply)
}

impl Swept {
    fn parse(reply: Value) -> ApiResult<Self> {
        let mut reply = Reply::new(reply)?;
        let departures = reply.departures(0)?;
        let earliest = reply.int(1)?;
        Ok(Self {
            departures,
            earliest_ms: (earliest >= 0).then_some(earliest),
            emptied_us: reply.emptied(2)?,
        })
    }
}

/// `lua/clients.lua`: one place given back per entry of `clients` (a client key, or "" for a
/// peer not counted against an address) in the per-address counts and the peer count.
pub(super) async fn release_clients(
    inner: &Inner,
    room: &RoomName,
    clients: &[String],
) -> ApiResult<()> {
    let keys = &inner.keys;
    let mut invocation = inner.scripts.clients.key(&keys.clients);
    invocation
        .key(&keys.client_rooms)
        .key(&keys.peer_count)
        .arg(global_ttl_ms())
        .arg(room.as_str());
    for client in clients {
        invocation.arg(client);
    }
    let _: i64 = inner.connection.run(&invocation).await?;
    Ok(())
}

/// `lua/release.lua`: forgets a room emptied at `emptied_us` (unless it was created again
/// since).
pub(super) async fn release(inner: &Inner, room: &RoomName, emptied_us: i64) -> ApiResult<()> {
    let _: Value = inner
        .connection
        .run(
            on_globals(&inner.keys, &inner.scripts.release)
                .arg(room.as_str())
                .arg(emptied_us),
        )
        .await?;
    Ok(())
}

// ---- authorize.lua, open.lua, read.lua, ack.lua: a peer's reader ----

/// `lua/authorize.lua`: whether `token` is `peer`'s, which then counts as present.
pub(super) async fn authorize(
    inner: &Inner,
    room: &RoomName,
    peer: PeerId,
    token: Option<&str>,
) -> ApiResult<()> {
    let reply: Value = run_room(
        inner,
        on_room(inner, "authorize", &inner.keys.peers(room))
            .arg(peer.to_string())
            .arg(token.map(digest).unwrap_or_default())
            .arg(inner.limits.peer_timeout.as_millis() as u64)
            .arg(inner.key_ttl_ms),
    )
    .await?;
    ok_or_refusal(reply)?
        .map(drop)
        .map_err(|refusal| refusal.error(&inner.limits))
}

/// The arguments every reader script takes first: `KEYS[1]` and the peer id, formatted once
/// for every read.
pub(super) struct ReaderKeys {
    pub(super) peers: String,
    pub(super) peer: String,
}

/// What `lua/open.lua` answered.
#[derive(Debug, PartialEq)]
pub(super) enum Opened {
    /// The caller is the newest reader of its kind, with this `epoch`; the newest id.
    Open { epoch: u64, last_id: u64 },
    /// The peer is gone.
    Closed,
}

/// `lua/open.lua`: makes the caller the peer's newest reader of `kind` (`"stream"` or
/// `"poll"`), after acknowledging `acknowledge`.
pub(super) async fn open(
    inner: &Inner,
    reader: &ReaderKeys,
    kind: &str,
    acknowledge: Option<u64>,
    nonce: u32,
) -> ApiResult<Opened> {
    let reply: Value = run_room(
        inner,
        on_room(inner, "open", &reader.peers)
            .arg(&reader.peer)
            .arg(acknowledge.map(|id| id.to_string()).unwrap_or_default())
            .arg(inner.limits.replay_window)
            .arg(inner.limits.replay_window_bytes)
            .arg(kind)
            .arg(nonce),
    )
    .await?;
    Opened::parse(reply)
}

impl Opened {
    fn parse(reply: Value) -> ApiResult<Self> {
        let reply = Reply::new(reply)?;
        match reply.status()? {
            "ok" => Ok(Self::Open {
                epoch: reply.int(1)? as u64,
                last_id: reply.int(2)? as u64,
            }),
            "closed" => Ok(Self::Closed),
            other => Err(unexpected(other)),
        }
    }
}

/// `lua/read.lua`: what follows `cursor`, at most [`READ_LIMIT`] entries and, past the first,
/// `max_bytes` bytes of envelopes; acknowledging `acknowledge` first.
pub(super) async fn read(
    inner: &Inner,
    reader: &ReaderKeys,
    cursor: u64,
    acknowledge: Option<u64>,
    ticket: Option<Ticket>,
    max_bytes: usize,
) -> ApiResult<Read> {
    let reply: Value = run_room(
        inner,
        on_room(inner, "read", &reader.peers)
            .arg(&reader.peer)
            .arg(cursor)
            .arg(acknowledge.map(|id| id.to_string()).unwrap_or_default())
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
    parse_read(reply)
}

/// The reply of [`read`]: `{"closed"}`, `{"replaced"}`, or `{"ok", newest id, reset, id of the
/// first entry, {entries}}`, each entry `<type> <envelope>`.
fn parse_read(reply: Value) -> ApiResult<Read> {
    let mut reply = Reply::new(reply)?;
    Ok(match reply.status()? {
        "ok" => {
            let last_id = reply.int(1)? as u64;
            let reset = match reply.string(2)? {
                "" => None,
                "expired" => Some(ResetReason::Expired),
                "ahead" => Some(ResetReason::Ahead),
                "lost" => Some(ResetReason::Lost),
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
    })
}

/// `lua/ack.lua`: acknowledges `acknowledge`, which no read has carried.
pub(super) async fn acknowledge(
    inner: &Inner,
    reader: &ReaderKeys,
    acknowledge: u64,
) -> ApiResult<()> {
    let _: Value = run_room(
        inner,
        on_room(inner, "ack", &reader.peers)
            .arg(&reader.peer)
            .arg(acknowledge)
            .arg(inner.limits.replay_window)
            .arg(inner.limits.replay_window_bytes),
    )
    .await?;
    Ok(())
}

/// A script's reply: an array whose first element is a status (or whatever the script says),
/// read by position only here.
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

    /// `emptied (0/1), now (µs)` at `index`: when the room was emptied, if it was.
    fn emptied(&self, index: usize) -> ApiResult<Option<i64>> {
        Ok(if self.int(index)? == 1 {
            Some(self.int(index + 1)?)
        } else {
            None
        })
    }

    /// The array of strings at `index`, moving the bytes out of the reply instead of copying
    /// them.
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

    /// A cluster room script's held bytes: `client key, delta, …` (the whole reply).
    fn deltas(self) -> ApiResult<Vec<(String, i64)>> {
        self.0
            .chunks(2)
            .map(|pair| match pair {
                [Value::BulkString(client), Value::Int(delta)] => Ok((
                    String::from_utf8(client.clone()).map_err(|_| unexpected("bytes"))?,
                    *delta,
                )),
                _ => Err(unexpected("an odd list of held bytes")),
            })
            .collect()
    }

    /// The departures at `index`: `peer, reason, client key, …`.
    fn departures(&mut self, index: usize) -> ApiResult<Vec<Departure>> {
        let flat = self.take_strings(index)?;
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

#[cfg(test)]
mod tests {
    //! The replies' shapes, read without a Redis: each script's success and refusals, and that
    //! a reply of the wrong shape is an error, never a panic.

    use super::*;

    const ALICE: &str = "9b2c1a8e-1f55-4c3e-9d57-2b7f6e0f3a11";
    const BOB: &str = "0d6f4c2e-8a13-4b7a-a1c9-5e2d3f4b6c7d";

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn array(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    fn texts(items: &[&str]) -> Value {
        array(items.iter().map(|s| text(s)).collect())
    }

    fn is_unexpected<T: std::fmt::Debug>(result: ApiResult<T>) -> bool {
        matches!(result, Err(Error::Internal(_)))
    }

    /// Every malformed shape: not an array, empty, a number for a status, and a status with its
    /// fields missing or of the wrong type.
    fn malformed(statuses: &[&str]) -> Vec<Value> {
        let mut shapes = vec![
            Value::Nil,
            Value::Int(1),
            text("ok"),
            array(vec![]),
            array(vec![Value::Int(0)]),
            array(vec![text("no_such_status")]),
        ];
        for status in statuses {
            shapes.push(array(vec![text(status)]));
            shapes.push(array(vec![text(status), text("1"), text("2")]));
            shapes.push(array(vec![text(status), Value::Nil]));
        }
        shapes
    }

    /// reserve.lua's admission and each of its refusals, with the wait of `too_many_joins`
    /// never under a millisecond.
    #[test]
    fn admission_reads_every_status() {
        let parse = |items| Admission::parse(array(items));
        assert_eq!(
            parse(vec![text("ok"), Value::Int(1234)]).unwrap(),
            Admission::Admitted { reserved_us: 1234 }
        );
        assert_eq!(
            parse(vec![text("too_many_joins"), Value::Int(250)]).unwrap(),
            Admission::TooManyJoins {
                retry_after: Duration::from_millis(250)
            }
        );
        assert_eq!(
            parse(vec![text("too_many_joins"), Value::Int(0)]).unwrap(),
            Admission::TooManyJoins {
                retry_after: Duration::from_millis(1)
            }
        );
        assert_eq!(
            parse(vec![text("too_many_rooms")]).unwrap(),
            Admission::TooManyRooms
        );
        assert_eq!(
            parse(vec![text("too_many_peers_for_client")]).unwrap(),
            Admission::TooManyPeersForClient
        );
        assert_eq!(
            parse(vec![text("too_many_rooms_for_client")]).unwrap(),
            Admission::TooManyRoomsForClient
        );
        for shape in malformed(&["ok", "too_many_joins"]) {
            assert!(is_unexpected(Admission::parse(shape.clone())), "{shape:?}");
        }
    }

    /// join.lua's success, with and without the room created, and its two refusals.
    #[test]
    fn joined_reads_success_and_refusals() {
        let info = r#"{"name":"Alice"}"#;
        let created = JoinAnswer::parse(array(vec![
            text("ok"),
            Value::Int(1),
            texts(&[]),
            texts(&[]),
            Value::Int(1_000_000),
            Value::Int(5_000),
            Value::Int(0),
        ]))
        .unwrap();
        let JoinAnswer::Joined(created) = created else {
            panic!("a join that created its room reads as a join");
        };
        assert!(created.peers.is_empty() && created.departures.is_empty());
        assert_eq!(
            created.created,
            Some(Created {
                now_us: 1_000_000,
                deadline_ms: 5_000
            })
        );

        let existing = JoinAnswer::parse(array(vec![
            text("ok"),
            Value::Int(0),
            texts(&[ALICE, info]),
            texts(&[BOB, "evicted", "203.0.113.7"]),
            Value::Int(2_000_000),
            Value::Int(5_000),
            Value::Int(1),
        ]))
        .unwrap();
        let JoinAnswer::Joined(existing) = existing else {
            panic!("a join into an existing room reads as a join");
        };
        assert_eq!(existing.created, None);
        assert_eq!(existing.emptied_us, Some(2_000_000));
        assert_eq!(created.emptied_us, None);
        assert_eq!(existing.peers.len(), 1);
        assert_eq!(existing.peers[0].peer_id.to_string(), ALICE);
        assert_eq!(existing.peers[0].name.as_deref(), Some("Alice"));
        assert_eq!(
            existing.departures,
            vec![Departure {
                peer: PeerId::parse(BOB).unwrap(),
                reason: LeaveReason::Evicted,
                client: "203.0.113.7".parse().ok(),
            }]
        );

        assert!(matches!(
            JoinAnswer::parse(array(vec![text("peer_present")])),
            Ok(JoinAnswer::PeerPresent)
        ));
        assert!(matches!(
            JoinAnswer::parse(array(vec![text("room_full")])),
            Ok(JoinAnswer::RoomFull)
        ));
        for shape in malformed(&["ok"]) {
            assert!(is_unexpected(JoinAnswer::parse(shape.clone())), "{shape:?}");
        }
        // Created, but without its time and deadline; an odd list of peers; a bad departure.
        for shape in [
            array(vec![text("ok"), Value::Int(1), texts(&[]), texts(&[])]),
            array(vec![text("ok"), Value::Int(0), texts(&[ALICE]), texts(&[])]),
            array(vec![
                text("ok"),
                Value::Int(0),
                texts(&[]),
                texts(&[BOB, "vanished", ""]),
            ]),
            array(vec![text("ok"), Value::Int(0), texts(&[]), texts(&[BOB])]),
        ] {
            assert!(is_unexpected(JoinAnswer::parse(shape.clone())), "{shape:?}");
        }
    }

    /// The room scripts' error codes, with the index or the wait some carry, become the errors
    /// the memory store answers.
    #[test]
    fn refusals_read_their_codes_and_details() {
        let limits = Limits::new(&crate::config::Config::default());
        let refused = |items: Vec<Value>| match Removed::parse(array(items)) {
            Ok(Err(refusal)) => refusal.error(&limits),
            other => panic!("not a refusal: {other:?}"),
        };
        assert_eq!(refused(vec![text("room_not_found")]), Error::RoomNotFound);
        assert_eq!(refused(vec![text("peer_not_found")]), Error::PeerNotFound);
        assert_eq!(refused(vec![text("missing_token")]), Error::MissingToken);
        assert_eq!(refused(vec![text("invalid_token")]), Error::InvalidToken);
        assert_eq!(refused(vec![text("wrong_peer")]), Error::WrongPeer);
        assert_eq!(refused(vec![text("server_full")]), Error::ServerFull);
        assert_eq!(
            refused(vec![text("idempotency_key_reused")]),
            Error::IdempotencyKeyReused
        );
        assert_eq!(
            refused(vec![text("self_recipient"), Value::Int(2)]),
            Error::SelfRecipient { index: 2 }
        );
        assert_eq!(
            refused(vec![text("unknown_recipient"), Value::Int(0)]),
            Error::UnknownRecipient { index: 0 }
        );
        assert_eq!(
            refused(vec![text("rate_limited"), Value::Int(40)]),
            Error::RateLimited {
                retry_after: Duration::from_millis(40)
            }
        );
        assert_eq!(
            refused(vec![text("too_many_bytes_held")]),
            Error::TooManyBytesHeld {
                limit: limits.client_max_held_bytes
            }
        );
        // A code the scripts do not have, or one without the detail it carries.
        for shape in malformed(&["ok", "self_recipient", "unknown_recipient", "rate_limited"]) {
            assert!(is_unexpected(Removed::parse(shape.clone())), "{shape:?}");
            assert!(is_unexpected(Delivered::parse(shape.clone())), "{shape:?}");
        }
    }

    /// leave.lua's and send.lua's success: the departures, and the time the room emptied only
    /// when it did.
    #[test]
    fn removals_read_departures_and_emptied_room() {
        let left = Removed::parse(texts_then(
            &["ok"],
            vec![texts(&[ALICE, "left", ""]), Value::Int(1), Value::Int(77)],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(left.emptied_us, Some(77));
        assert_eq!(left.departures[0].reason, LeaveReason::Left);
        assert_eq!(left.departures[0].client, None);

        let sent = Delivered::parse(texts_then(
            &["ok"],
            vec![Value::Int(3), texts(&[]), Value::Int(0), Value::Int(77)],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            sent,
            Delivered {
                accepted: 3,
                removed: Removed {
                    departures: vec![],
                    emptied_us: None
                },
                replayed: false,
            }
        );

        let replayed = Delivered::parse(texts_then(
            &["ok"],
            vec![
                Value::Int(2),
                texts(&[]),
                Value::Int(0),
                Value::Int(77),
                text("replayed"),
            ],
        ))
        .unwrap()
        .unwrap();
        assert!(replayed.replayed);
        assert_eq!(replayed.accepted, 2);
        // A sixth element that is not the replay mark, or a seventh.
        for extra in [vec![text("again")], vec![text("replayed"), Value::Int(1)]] {
            let mut items = vec![Value::Int(2), texts(&[]), Value::Int(0), Value::Int(77)];
            items.extend(extra);
            assert!(is_unexpected(Delivered::parse(texts_then(&["ok"], items))));
        }
    }

    /// sweep.lua: the earliest deadline left, none once the room is gone, and the emptied room.
    #[test]
    fn swept_reads_deadline_and_emptied_room() {
        let kept = Swept::parse(array(vec![
            texts(&[BOB, "timeout", "198.51.100.1"]),
            Value::Int(9_000),
            Value::Int(0),
            Value::Int(5),
        ]))
        .unwrap();
        assert_eq!(kept.earliest_ms, Some(9_000));
        assert_eq!(kept.emptied_us, None);
        assert_eq!(kept.departures[0].reason, LeaveReason::Timeout);

        let gone = Swept::parse(array(vec![
            texts(&[]),
            Value::Int(-1),
            Value::Int(1),
            Value::Int(5),
        ]))
        .unwrap();
        assert_eq!(gone.earliest_ms, None);
        assert_eq!(gone.emptied_us, Some(5));

        for shape in [
            Value::Nil,
            array(vec![]),
            array(vec![texts(&[]), Value::Int(-1), Value::Int(1)]),
            array(vec![Value::Int(0), Value::Int(-1), Value::Int(0)]),
        ] {
            assert!(is_unexpected(Swept::parse(shape.clone())), "{shape:?}");
        }
    }

    /// open.lua: the epoch and newest id, or the peer gone.
    #[test]
    fn opened_reads_epoch_or_closed() {
        assert_eq!(
            Opened::parse(array(vec![text("ok"), Value::Int(4), Value::Int(12)])).unwrap(),
            Opened::Open {
                epoch: 4,
                last_id: 12
            }
        );
        assert_eq!(
            Opened::parse(array(vec![text("closed")])).unwrap(),
            Opened::Closed
        );
        for shape in malformed(&["ok"]) {
            assert!(is_unexpected(Opened::parse(shape.clone())), "{shape:?}");
        }
    }

    /// read.lua: entries numbered from the first id with their type cut off, each reset
    /// reason, and the reader closed or replaced.
    #[test]
    fn read_reads_entries_resets_and_endings() {
        let read = parse_read(array(vec![
            text("ok"),
            Value::Int(8),
            text("expired"),
            Value::Int(7),
            texts(&["offer {\"a\":1}", "leave {\"b\":2}"]),
        ]))
        .unwrap();
        let Read::Batch(batch) = read else {
            panic!("an ok read is a batch");
        };
        assert_eq!(batch.last_id, 8);
        assert_eq!(batch.reset, Some(ResetReason::Expired));
        let ids: Vec<u64> = batch.entries.iter().map(|entry| entry.id).collect();
        assert_eq!(ids, [7, 8]);
        assert_eq!(batch.entries[0].message.kind(), "offer");
        assert_eq!(batch.entries[0].message.body(), "{\"a\":1}");
        assert_eq!(batch.entries[1].message.kind(), "leave");

        let ahead = parse_read(array(vec![
            text("ok"),
            Value::Int(0),
            text("ahead"),
            Value::Int(1),
            texts(&[]),
        ]));
        assert!(matches!(
            ahead,
            Ok(Read::Batch(Batch {
                reset: Some(ResetReason::Ahead),
                ..
            }))
        ));
        // A sealed mailbox (room.lua, "Seal"): ids of a new generation, past 2^32.
        let lost = parse_read(array(vec![
            text("ok"),
            Value::Int(1 << 32),
            text("lost"),
            Value::Int((1 << 32) + 1),
            texts(&[]),
        ]));
        assert!(matches!(
            lost,
            Ok(Read::Batch(Batch {
                reset: Some(ResetReason::Lost),
                last_id: 4_294_967_296,
                ..
            }))
        ));
        assert!(matches!(
            parse_read(array(vec![text("closed")])),
            Ok(Read::Closed)
        ));
        assert!(matches!(
            parse_read(array(vec![text("replaced")])),
            Ok(Read::Replaced)
        ));

        for shape in malformed(&["ok"]) {
            assert!(is_unexpected(parse_read(shape.clone())), "{shape:?}");
        }
        // An entry without its type, and a reset reason the script does not give.
        for shape in [
            array(vec![
                text("ok"),
                Value::Int(1),
                text(""),
                Value::Int(1),
                texts(&["offer"]),
            ]),
            array(vec![
                text("ok"),
                Value::Int(1),
                text("late"),
                Value::Int(1),
                texts(&[]),
            ]),
        ] {
            assert!(is_unexpected(parse_read(shape.clone())), "{shape:?}");
        }
    }

    /// A cluster room script's held bytes: pairs of client key and delta (the key "" for what
    /// is charged to no address), and an odd or mistyped list is an error, never a panic.
    #[test]
    fn held_deltas_read_pairs() {
        let deltas = Reply::new(array(vec![
            text("198.51.100.7"),
            Value::Int(-120),
            text(""),
            Value::Int(64),
        ]))
        .unwrap()
        .deltas()
        .unwrap();
        assert_eq!(
            deltas,
            [("198.51.100.7".to_owned(), -120), (String::new(), 64)]
        );
        assert!(Reply::new(array(vec![]))
            .unwrap()
            .deltas()
            .unwrap()
            .is_empty());
        for shape in [
            array(vec![text("198.51.100.7")]),
            array(vec![Value::Int(1), Value::Int(2)]),
            array(vec![text("198.51.100.7"), text("12")]),
        ] {
            assert!(
                is_unexpected(Reply::new(shape.clone()).unwrap().deltas()),
                "{shape:?}"
            );
        }
    }

    /// `items` as strings, then `rest`.
    fn texts_then(items: &[&str], rest: Vec<Value>) -> Value {
        let mut all: Vec<Value> = items.iter().map(|s| text(s)).collect();
        all.extend(rest);
        array(all)
    }
}
