//! The hub: every room, its peers and their mailboxes, and the operations the API performs on
//! them. It knows nothing of HTTP.
//!
//! This is the seam for running several instances against a shared store: the API layer only
//! calls the methods of [`Hub`] (join, leave, send, open a mailbox, look up, sweep), each of
//! which is one short transaction, and only reads messages through the [`Mailbox`] it hands out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::client_limits::PeersPerClient;
use crate::config::Config;
use crate::error::{ApiResult, Error};
use crate::identity::{PeerId, PeerToken, RoomName};
use crate::logging;
use crate::mailbox::{Mailbox, Push};
use crate::message::{EncodedMessage, MessageType, OutgoingMessage};
use crate::metrics::Metrics;
use crate::rate_limit::TokenBucket;

/// A cheap, cloneable handle on the shared state.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    /// All rooms, behind one `parking_lot::Mutex`. Every operation is O(peers in a room) and
    /// short (no I/O, no `.await`, no JSON encoding: messages are encoded before locking), so one
    /// lock keeps the invariants simple (a room exists iff it has peers; a sender's messages are
    /// pushed to all its recipients atomically, which is what orders them) at a cost measured in
    /// the benchmarks. Mailboxes have their own lock, always taken after this one, so readers
    /// never touch it.
    rooms: Mutex<HashMap<RoomName, Room>>,
    /// Live peers per client address. Only ever locked while `rooms` is held (so after it), which
    /// keeps each count equal to the peers of that address in `rooms`.
    peers_per_client: Mutex<PeersPerClient>,
    limits: Limits,
    /// Told of every join and departure (atomic adds, fine under the lock).
    metrics: Metrics,
}

/// The parts of [`Config`] the hub enforces.
struct Limits {
    max_rooms: usize,
    max_peers_per_room: usize,
    max_message_bytes: usize,
    mailbox_capacity: usize,
    replay_window: usize,
    send_rate_per_sec: f64,
    send_burst: f64,
    max_peers_per_client: usize,
    /// The `Retry-After` of `too_many_peers_for_client`: by then a peer that went away without
    /// leaving has timed out.
    peer_timeout: Duration,
}

/// A room with at least one peer; the last peer to go removes it.
struct Room {
    /// In join order. A Vec because rooms are small (`max_peers_per_room`) and scanned whole.
    peers: Vec<Peer>,
}

struct Peer {
    id: PeerId,
    token: PeerToken,
    name: Option<String>,
    meta: Option<Box<RawValue>>,
    mailbox: Arc<Mailbox>,
    send_rate: TokenBucket,
    /// The client address it joined from, counted in `peers_per_client` while it is here.
    client: Option<IpAddr>,
}

/// What other peers may know about a peer; never its token.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
}

/// The result of a successful join.
#[derive(Debug)]
pub struct Joined {
    pub peer_id: PeerId,
    pub token: PeerToken,
    /// The peers that were already in the room, in join order.
    pub peers: Vec<PeerInfo>,
}

/// Why a peer left its room, as told to the others in the `leave` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveReason {
    /// It asked to leave.
    Left,
    /// No stream or poll for `peer_timeout_secs`.
    Timeout,
    /// Its undelivered backlog reached `mailbox_capacity`: it stopped reading.
    Evicted,
}

impl LeaveReason {
    fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Evicted => "evicted",
        }
    }
}

impl Hub {
    pub fn new(config: &Config) -> Self {
        Self::with_metrics(config, Metrics::new())
    }

    /// A hub that reports joins and departures to `metrics`.
    pub fn with_metrics(config: &Config, metrics: Metrics) -> Self {
        let limits = Limits {
            max_rooms: config.max_rooms,
            max_peers_per_room: config.max_peers_per_room,
            max_message_bytes: config.max_message_bytes,
            mailbox_capacity: config.mailbox_capacity,
            replay_window: config.replay_window,
            send_rate_per_sec: config.send_rate_per_sec,
            send_burst: config.send_burst,
            max_peers_per_client: config.max_peers_per_client,
            peer_timeout: config.peer_timeout(),
        };
        Self {
            shared: Arc::new(Shared {
                rooms: Mutex::new(HashMap::new()),
                peers_per_client: Mutex::new(PeersPerClient::default()),
                limits,
                metrics,
            }),
        }
    }

    /// Adds a new peer to `room`, creating the room if needed, and tells the others. `client`
    /// is the address it joins from, held to `max_peers_per_client` (`None`: not counted).
    pub fn join(
        &self,
        room: &RoomName,
        name: Option<String>,
        meta: Option<Box<RawValue>>,
        client: Option<IpAddr>,
    ) -> ApiResult<Joined> {
        let limits = &self.shared.limits;
        let id = PeerId::random();
        let token = PeerToken::generate()
            .map_err(|_| Error::Internal("the operating system has no randomness to give"))?;
        let announcement = EncodedMessage::from_server(
            "join",
            &PeerInfo {
                peer_id: id,
                name: name.clone(),
                meta: meta.clone(),
            },
        );
        let mailbox = Arc::new(Mailbox::new(limits.mailbox_capacity, limits.replay_window));
        let peer = Peer {
            id,
            token: token.clone(),
            name,
            meta,
            mailbox,
            send_rate: TokenBucket::new(
                limits.send_rate_per_sec,
                limits.send_burst,
                Instant::now(),
            ),
            client,
        };

        let mut rooms = self.shared.rooms.lock();
        if !rooms.contains_key(room) && rooms.len() >= limits.max_rooms {
            return Err(Error::TooManyRooms {
                limit: limits.max_rooms,
            });
        }
        let members = rooms
            .entry(room.clone())
            .or_insert_with(|| Room { peers: Vec::new() });
        if members.peers.len() >= limits.max_peers_per_room {
            return Err(Error::RoomFull {
                limit: limits.max_peers_per_room,
            });
        }
        let mut peers_per_client = self.shared.peers_per_client.lock();
        if let Some(client) = client {
            if !peers_per_client.try_add(client, limits.max_peers_per_client) {
                if members.peers.is_empty() {
                    rooms.remove(room);
                }
                return Err(Error::TooManyPeersForClient {
                    limit: limits.max_peers_per_client,
                    retry_after: limits.peer_timeout,
                });
            }
        }
        let peers = members.peers.iter().map(Peer::info).collect();
        let overflowing: Vec<PeerId> = members
            .peers
            .iter()
            .filter(|other| other.mailbox.push(Arc::clone(&announcement)) == Push::Full)
            .map(|other| other.id)
            .collect();
        members.peers.push(peer);
        match client {
            Some(client) => {
                logging::info(format_args!("join room={room} peer={id} client={client}"))
            }
            None => logging::info(format_args!("join room={room} peer={id}")),
        }
        self.shared.metrics.peer_joined();
        let metrics = &self.shared.metrics;
        evict_all(
            &mut rooms,
            &mut peers_per_client,
            metrics,
            room,
            overflowing,
        );
        Ok(Joined {
            peer_id: id,
            token,
            peers,
        })
    }

    /// Removes the peer at the caller's request.
    pub fn leave(&self, room: &RoomName, peer: PeerId, token: Option<&str>) -> ApiResult<()> {
        let mut rooms = self.shared.rooms.lock();
        let members = rooms.get(room).ok_or(Error::RoomNotFound)?;
        authorize(members, peer, token)?;
        remove_peer(
            &mut rooms,
            &mut self.shared.peers_per_client.lock(),
            &self.shared.metrics,
            room,
            peer,
            LeaveReason::Left,
        );
        Ok(())
    }

    /// Accepts a batch from the peer that `token` belongs to: all of it, or, on any error,
    /// none of it. Returns how many messages were accepted.
    pub fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: Vec<OutgoingMessage>,
    ) -> ApiResult<usize> {
        let sender = {
            let rooms = self.shared.rooms.lock();
            let members = rooms.get(room).ok_or(Error::RoomNotFound)?;
            identify(members, token)?.id
        };

        if batch.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let kinds = batch
            .iter()
            .enumerate()
            .map(|(index, message)| {
                MessageType::parse_client(&message.kind)
                    .map_err(|reason| Error::InvalidType { index, reason })
            })
            .collect::<ApiResult<Vec<_>>>()?;

        // Encode outside the lock: this is the only serialisation a message ever gets.
        let limit = self.shared.limits.max_message_bytes;
        let mut encoded = Vec::with_capacity(batch.len());
        for (index, (message, kind)) in batch.iter().zip(&kinds).enumerate() {
            let envelope = EncodedMessage::from_peer(sender, kind, message.data.as_deref());
            if envelope.encoded_len() > limit {
                return Err(Error::MessageTooLarge {
                    index,
                    size: envelope.encoded_len(),
                    limit,
                });
            }
            encoded.push((message.to, envelope));
        }

        let mut rooms = self.shared.rooms.lock();
        // The sender may have left while we encoded: look it up again, by id this time.
        let members = rooms.get_mut(room).ok_or(Error::PeerNotFound)?;
        let sender_index = members
            .peers
            .iter()
            .position(|p| p.id == sender)
            .ok_or(Error::PeerNotFound)?;
        for (index, (to, _)) in encoded.iter().enumerate() {
            match to {
                Some(to) if *to == sender => return Err(Error::SelfRecipient { index }),
                Some(to) if !members.peers.iter().any(|p| p.id == *to) => {
                    return Err(Error::UnknownRecipient { index })
                }
                _ => {}
            }
        }
        members.peers[sender_index]
            .send_rate
            .take(encoded.len() as f64, Instant::now())
            .map_err(|retry_after| Error::RateLimited { retry_after })?;

        let mut overflowing = Vec::new();
        for (to, envelope) in &encoded {
            let recipients = members.peers.iter().filter(|p| match to {
                Some(to) => p.id == *to,
                None => p.id != sender,
            });
            for recipient in recipients {
                if recipient.mailbox.push(Arc::clone(envelope)) == Push::Full
                    && !overflowing.contains(&recipient.id)
                {
                    overflowing.push(recipient.id);
                }
            }
        }
        let mut peers_per_client = self.shared.peers_per_client.lock();
        let metrics = &self.shared.metrics;
        evict_all(
            &mut rooms,
            &mut peers_per_client,
            metrics,
            room,
            overflowing,
        );
        Ok(encoded.len())
    }

    /// The mailbox of `peer`, for the request that proves to be that peer.
    pub fn mailbox(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Arc<Mailbox>> {
        let rooms = self.shared.rooms.lock();
        let members = rooms.get(room).ok_or(Error::RoomNotFound)?;
        authorize(members, peer, token).map(|peer| Arc::clone(&peer.mailbox))
    }

    /// Succeeds if `token` is the token of `peer`, with the same errors as the peer's other
    /// authenticated requests.
    pub fn authenticate(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<()> {
        self.mailbox(room, peer, token).map(drop)
    }

    /// The peers of a room, in join order, or `None` if it does not exist.
    pub fn room(&self, room: &RoomName) -> Option<Vec<PeerInfo>> {
        let rooms = self.shared.rooms.lock();
        rooms
            .get(room)
            .map(|members| members.peers.iter().map(Peer::info).collect())
    }

    /// One peer's public description.
    pub fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo> {
        let rooms = self.shared.rooms.lock();
        let members = rooms.get(room).ok_or(Error::RoomNotFound)?;
        members
            .peers
            .iter()
            .find(|p| p.id == peer)
            .map(Peer::info)
            .ok_or(Error::PeerNotFound)
    }

    /// Removes every peer that has had no listener for `timeout`. Returns how many went.
    pub fn sweep(&self, now: Instant, timeout: std::time::Duration) -> usize {
        let mut rooms = self.shared.rooms.lock();
        let expired: Vec<(RoomName, PeerId)> = rooms
            .iter()
            .flat_map(|(name, members)| {
                members
                    .peers
                    .iter()
                    .filter(|p| p.mailbox.idle_for(now).is_some_and(|idle| idle >= timeout))
                    .map(move |p| (name.clone(), p.id))
            })
            .collect();
        let mut peers_per_client = self.shared.peers_per_client.lock();
        for (room, peer) in &expired {
            let metrics = &self.shared.metrics;
            let clients = &mut peers_per_client;
            remove_peer(
                &mut rooms,
                clients,
                metrics,
                room,
                *peer,
                LeaveReason::Timeout,
            );
        }
        expired.len()
    }

    /// Rooms and peers held right now.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.shared.rooms.lock();
        (
            rooms.len(),
            rooms.values().map(|members| members.peers.len()).sum(),
        )
    }
}

impl Peer {
    fn info(&self) -> PeerInfo {
        PeerInfo {
            peer_id: self.id,
            name: self.name.clone(),
            meta: self.meta.clone(),
        }
    }
}

/// The peer a token belongs to. Every peer's token is compared, in constant time, so that
/// timing says nothing about which part of a token was right.
fn identify<'a>(members: &'a Room, token: Option<&str>) -> ApiResult<&'a Peer> {
    let token = token.ok_or(Error::MissingToken)?;
    members
        .peers
        .iter()
        .fold(None, |found, peer| {
            if peer.token.matches(token) {
                Some(peer)
            } else {
                found
            }
        })
        .ok_or(Error::InvalidToken)
}

/// `peer`, if `token` is its token. A peer that is not (or no longer) in the room is a 404
/// whatever the token, so a removed client learns that it is gone; peer ids are public, so this
/// reveals nothing. A token of another peer in the room is a 403, so a client with a mixed-up id
/// is told so; a token of nobody is a 401.
fn authorize<'a>(members: &'a Room, peer: PeerId, token: Option<&str>) -> ApiResult<&'a Peer> {
    let target = members
        .peers
        .iter()
        .find(|p| p.id == peer)
        .ok_or(Error::PeerNotFound)?;
    let owner = identify(members, token)?;
    if owner.id == target.id {
        Ok(target)
    } else {
        Err(Error::WrongPeer)
    }
}

/// Removes `peer`, closes its mailbox and tells the others; drops the room once it is empty.
/// A `leave` that overflows another mailbox evicts that peer too, and so on.
fn remove_peer(
    rooms: &mut HashMap<RoomName, Room>,
    peers_per_client: &mut PeersPerClient,
    metrics: &Metrics,
    room: &RoomName,
    peer: PeerId,
    reason: LeaveReason,
) {
    let mut pending = vec![(peer, reason)];
    while let Some((peer, reason)) = pending.pop() {
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        let Some(index) = members.peers.iter().position(|p| p.id == peer) else {
            continue;
        };
        let gone = members.peers.remove(index);
        gone.mailbox.close();
        if let Some(client) = gone.client {
            peers_per_client.remove(client);
        }
        logging::info(format_args!(
            "leave room={room} peer={peer} reason={}",
            reason.as_str()
        ));
        metrics.peer_left(reason);
        #[derive(Serialize)]
        struct Leave {
            peer_id: PeerId,
            reason: LeaveReason,
        }
        let event = EncodedMessage::from_server(
            "leave",
            &Leave {
                peer_id: peer,
                reason,
            },
        );
        for other in &members.peers {
            if other.mailbox.push(Arc::clone(&event)) == Push::Full
                && !pending.iter().any(|(id, _)| *id == other.id)
            {
                pending.push((other.id, LeaveReason::Evicted));
            }
        }
        if members.peers.is_empty() {
            rooms.remove(room);
        }
    }
}

fn evict_all(
    rooms: &mut HashMap<RoomName, Room>,
    peers_per_client: &mut PeersPerClient,
    metrics: &Metrics,
    room: &RoomName,
    peers: Vec<PeerId>,
) {
    for peer in peers {
        logging::warn(format_args!(
            "evict room={room} peer={peer}: undelivered backlog is full"
        ));
        remove_peer(
            rooms,
            peers_per_client,
            metrics,
            room,
            peer,
            LeaveReason::Evicted,
        );
    }
}
