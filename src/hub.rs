//! The hub: the operations the API performs on rooms and peers, and the rules that need no
//! storage. It knows nothing of HTTP, and nothing of where rooms are kept: that is the
//! [`Store`]'s job (in memory, or in Redis for several instances).
//!
//! Here live, once for both stores: message validation and encoding (each message is encoded
//! once, before the store sees it), the order in which errors are reported, and the log line
//! and the metrics of every join and departure, whichever store or instance caused it.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::config::Config;
use crate::error::{ApiResult, Error};
use crate::idempotency::IdempotencyKey;
use crate::identity::{PeerId, PeerToken, RoomName};
use crate::logging;
use crate::message::{Draft, EncodedMessage, MessageType, OutgoingMessage};
use crate::metrics::Metrics;
use crate::store::{self, Departure, NewPeer, Outgoing, Reader, Store};

pub use crate::store::{LeaveReason, PeerInfo};

/// A cheap, cloneable handle on the shared state.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    /// Memory or Redis: which one, only the store knows.
    store: Arc<dyn Store>,
    /// The largest encoded envelope accepted.
    max_message_bytes: usize,
    /// Told of every join and departure.
    metrics: Metrics,
    /// `client_ipv6_prefix`: how client addresses become the keys of the per-address limits.
    client_ipv6_prefix: u8,
}

/// The answer to an accepted send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The batch's messages accepted.
    pub count: usize,
    /// A retry under the send's idempotency key: answered as the first, delivered nothing.
    pub replayed: bool,
}

/// The result of a successful join.
#[derive(Debug)]
pub struct Joined {
    pub peer_id: PeerId,
    pub token: PeerToken,
    /// The peers that were already in the room, in join order.
    pub peers: Vec<PeerInfo>,
}

impl Hub {
    /// A hub on the memory store, whatever `config` says: for benchmarks and unit tests.
    pub fn new(config: &Config) -> Self {
        let config = Config {
            redis_url: None,
            redis_sentinels: None,
            redis_cluster_nodes: None,
            ..config.clone()
        };
        Self::with_metrics(&config, Metrics::new()).expect("the memory store always starts")
    }

    /// A hub on the store `config` names, reporting to `metrics`.
    pub fn with_metrics(config: &Config, metrics: Metrics) -> Result<Self, String> {
        Ok(Self {
            shared: Arc::new(Shared {
                store: store::open(config, &metrics)?,
                max_message_bytes: config.max_message_bytes,
                metrics,
                client_ipv6_prefix: config.client_ipv6_prefix,
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn store(&self) -> &dyn Store {
        &*self.shared.store
    }

    /// The key `client`'s per-address limits are kept under.
    pub fn limit_key(&self, client: IpAddr) -> IpAddr {
        crate::client_address::limit_key(client, self.shared.client_ipv6_prefix)
    }

    /// Charges a join from `client` that is refused before [`join_as`](Self::join_as) against
    /// the join rate (`join_rate_per_sec`, `join_burst`), so that a flood of joins with bad tokens
    /// is held to it too; `join_as` charges the rate itself, first.
    pub async fn charge_join(&self, client: IpAddr) -> ApiResult<()> {
        self.shared.store.charge_join(self.limit_key(client)).await
    }

    /// Adds a new peer to `room`, creating the room if needed, and tells the others.
    /// `client` is the address it joins from, charged to the join rate and held to the other
    /// limits per address (`None`: not counted).
    pub async fn join(
        &self,
        room: &RoomName,
        name: Option<String>,
        meta: Option<Box<RawValue>>,
        client: Option<IpAddr>,
    ) -> ApiResult<Joined> {
        self.join_as(room, None, name, meta, client).await
    }

    /// [`Hub::join`], under the peer id `resumed` when given (a verified resume credential):
    /// refused with `peer_present` while a peer with that id is in the room, so that a
    /// credential never takes over a live peer's place.
    pub async fn join_as(
        &self,
        room: &RoomName,
        resumed: Option<PeerId>,
        name: Option<String>,
        meta: Option<Box<RawValue>>,
        client: Option<IpAddr>,
    ) -> ApiResult<Joined> {
        let id = resumed.unwrap_or_else(PeerId::random);
        let token = PeerToken::generate()
            .map_err(|_| Error::Internal("the operating system has no randomness to give"))?;
        let info = PeerInfo {
            peer_id: id,
            name,
            meta,
        };
        let announcement = EncodedMessage::from_server("join", &info);
        let peer = NewPeer {
            info,
            token: token.clone(),
            client: client.map(|client| self.limit_key(client)),
        };
        let outcome = self.shared.store.join(room, peer, announcement).await?;
        let resumed = if resumed.is_some() { " resumed" } else { "" };
        match client {
            Some(client) => logging::info(format_args!(
                "join room={room} peer={id} client={client}{resumed}"
            )),
            None => logging::info(format_args!("join room={room} peer={id}{resumed}")),
        }
        self.shared.metrics.peer_joined();
        self.departed(room, &outcome.departures);
        Ok(Joined {
            peer_id: id,
            token,
            peers: outcome.peers,
        })
    }

    /// Removes the peer at the caller's request.
    pub async fn leave(&self, room: &RoomName, peer: PeerId, token: Option<&str>) -> ApiResult<()> {
        let departures = self.shared.store.leave(room, peer, token).await?;
        self.departed(room, &departures);
        Ok(())
    }

    /// Accepts a batch from the peer that `token` belongs to: all of it, or, on any error,
    /// none of it. Under an idempotency `key`, a retry of an accepted send is answered as it
    /// was, and delivers nothing again ([`Store::send`]). Returns how many messages were
    /// accepted.
    pub async fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: Vec<OutgoingMessage<'_>>,
        key: Option<&IdempotencyKey>,
    ) -> ApiResult<Accepted> {
        let outgoing = match self.prepare(batch) {
            Ok(outgoing) => outgoing,
            Err(error) => {
                // A stranger learns nothing from the body: who is asking is checked first.
                self.shared.store.identify(room, token).await?;
                return Err(error);
            }
        };
        let sent = self.shared.store.send(room, token, &outgoing, key).await?;
        self.departed(room, &sent.departures);
        Ok(Accepted {
            count: sent.accepted,
            replayed: sent.replayed,
        })
    }

    /// Validates a batch and encodes each message, once, for every recipient. Every message's
    /// type is checked before any size is: an invalid type anywhere is the error, before a
    /// message too large.
    fn prepare(&self, batch: Vec<OutgoingMessage<'_>>) -> ApiResult<Vec<Outgoing>> {
        if batch.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let limit = self.shared.max_message_bytes;
        let mut outgoing = Vec::with_capacity(batch.len());
        let mut too_large = None;
        for (index, message) in batch.iter().enumerate() {
            let kind = MessageType::parse_client(&message.kind)
                .map_err(|reason| Error::InvalidType { index, reason })?;
            if too_large.is_some() {
                continue;
            }
            let draft = Draft::new(kind, message.data);
            if draft.signed_len() > limit {
                too_large = Some(Error::MessageTooLarge {
                    index,
                    size: draft.signed_len(),
                    limit,
                });
                continue;
            }
            outgoing.push(Outgoing {
                to: message.to,
                draft,
            });
        }
        match too_large {
            Some(error) => Err(error),
            None => Ok(outgoing),
        }
    }

    /// The peer of `room` that `token` belongs to.
    pub async fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId> {
        self.shared.store.identify(room, token).await
    }

    /// The mailbox of `peer`, for the stream or poll that proves to be that peer.
    pub async fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Box<dyn Reader>> {
        self.shared.store.reader(room, peer, token).await
    }

    /// Succeeds if `token` is the token of `peer`, with the same errors as the peer's other
    /// authenticated requests.
    pub async fn authenticate(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<()> {
        self.reader(room, peer, token).await.map(drop)
    }

    /// The peers of a room, in join order, or `None` if it does not exist.
    pub async fn room(&self, room: &RoomName) -> ApiResult<Option<Vec<PeerInfo>>> {
        self.shared.store.room(room).await
    }

    /// One peer's public description.
    pub async fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo> {
        self.shared.store.peer(room, peer).await
    }

    /// Removes every peer that has had no listener for `peer_timeout`. Returns how many went.
    pub async fn sweep(&self) -> ApiResult<usize> {
        let gone = self.shared.store.sweep().await?;
        for (room, departure) in &gone {
            self.departed(room, std::slice::from_ref(departure));
        }
        self.shared.metrics.presence_swept();
        Ok(gone.len())
    }

    /// Rooms and peers held right now.
    pub async fn counts(&self) -> ApiResult<(usize, usize)> {
        self.shared.store.counts().await
    }

    /// Logs and counts departures, once each.
    fn departed(&self, room: &RoomName, departures: &[Departure]) {
        for Departure { peer, reason, .. } in departures {
            if *reason == LeaveReason::Evicted {
                logging::warn(format_args!(
                    "evict room={room} peer={peer}: undelivered backlog is full"
                ));
            }
            logging::info(format_args!(
                "leave room={room} peer={peer} reason={}",
                reason.as_str()
            ));
            self.shared.metrics.peer_left(*reason);
        }
    }
}
