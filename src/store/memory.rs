//! The in-memory store, and the default: every room of one process in one map. It is the
//! reference the Redis store is held to (the behaviour suite runs on both).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rocket::async_trait;

use crate::client_limits::{ClientHoldings, JoinRate};
use crate::error::{ApiResult, Error};
use crate::held_bytes::HeldBytes;
use crate::idempotency::{Fingerprint, IdempotencyKey, Recalled, RecentSends};
use crate::identity::{PeerId, PeerToken, RoomName};
use crate::mailbox::{Mailbox, MailboxLimits, PollTicket, Push, Read, StreamTicket, Ticket};
use crate::message::EncodedMessage;
use crate::rate_limit::TokenBucket;
use crate::store::{
    leave_event, Departure, JoinOutcome, LeaveReason, Limits, Listening, NewPeer, Outgoing,
    PeerInfo, PollStart, Reader, Sent, Store, Wake,
};

pub struct MemoryStore {
    /// All rooms, behind one `parking_lot::Mutex`. Every operation is O(peers in a room) and
    /// short (no I/O, no `.await`, no JSON encoding: messages are encoded before locking), so one
    /// lock keeps the invariants simple (a room exists iff it has peers; a sender's messages are
    /// pushed to all its recipients atomically, which is what orders them) at a cost measured in
    /// the benchmarks. Mailboxes have their own lock, always taken after this one, so readers
    /// never touch it.
    rooms: Mutex<Rooms>,
    /// Joins per client address; its own lock, since a join is charged before it is checked.
    join_rate: JoinRate,
    /// Bytes held in the mailboxes, per sender's address and in total. Lock order: `rooms`,
    /// then a mailbox's, then the ledger's; in fact the ledger's is never held with a mailbox's
    /// (a mailbox releases after unlocking), and a send charges it under `rooms` before it
    /// pushes anything, so that a refused send changes nothing.
    held: Arc<HeldBytes>,
    limits: Limits,
}

struct Rooms {
    rooms: HashMap<RoomName, Room>,
    /// Live peers and their rooms per client address, under the same lock, so that each count
    /// always equals the peers of that address in `rooms`.
    clients: ClientHoldings,
}

/// A room with at least one peer; the last peer to go removes it.
struct Room {
    /// In join order. A Vec because rooms are small (`max_peers_per_room`) and scanned whole.
    peers: Vec<Peer>,
}

struct Peer {
    info: PeerInfo,
    /// The address it joined from, counted in `clients` while it is here.
    client: Option<IpAddr>,
    token: PeerToken,
    mailbox: Arc<Mailbox>,
    send_rate: TokenBucket,
    /// Its sends under an `Idempotency-Key`, within the window; gone with the peer.
    recent_sends: RecentSends,
}

impl MemoryStore {
    pub fn new(limits: Limits) -> Self {
        Self {
            rooms: Mutex::new(Rooms {
                rooms: HashMap::new(),
                clients: ClientHoldings::default(),
            }),
            join_rate: JoinRate::new(limits.join_rate_per_sec, limits.join_burst),
            held: Arc::new(HeldBytes::new(
                limits.client_max_held_bytes,
                limits.max_held_bytes,
            )),
            limits,
        }
    }

    /// The ledger of bytes held; for tests and metrics.
    pub fn held(&self) -> &HeldBytes {
        &self.held
    }

    fn mailbox_limits(&self) -> MailboxLimits {
        MailboxLimits {
            capacity: self.limits.mailbox_capacity,
            max_bytes: self.limits.mailbox_max_bytes,
            replay_window: self.limits.replay_window,
            replay_window_bytes: self.limits.replay_window_bytes,
        }
    }

    pub fn charge_join(&self, client: IpAddr) -> ApiResult<()> {
        self.join_rate
            .charge(client, Instant::now())
            .map_err(|retry_after| Error::TooManyJoins { retry_after })
    }

    /// Charges the join rate, then checks the join in the order [`NewPeer`] states.
    pub fn join(
        &self,
        room: &RoomName,
        peer: NewPeer,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome> {
        let limits = &self.limits;
        let client = peer.client;
        if let Some(client) = client {
            self.charge_join(client)?;
        }
        let peer = Peer {
            info: peer.info,
            client,
            token: peer.token,
            mailbox: Arc::new(Mailbox::new(self.mailbox_limits(), Arc::clone(&self.held))),
            send_rate: TokenBucket::new(
                limits.send_rate_per_sec,
                limits.send_burst,
                Instant::now(),
            ),
            recent_sends: RecentSends::new(
                limits.idempotency_window,
                limits.idempotency_keys_per_peer,
            ),
        };
        let mut state = self.rooms.lock();
        let Rooms { rooms, clients } = &mut *state;
        let id = peer.info.peer_id;
        if rooms
            .get(room)
            .is_some_and(|members| members.peers.iter().any(|p| p.info.peer_id == id))
        {
            // Only a resumed join names its id, and it may not replace a live peer.
            return Err(Error::PeerPresent);
        }
        if rooms
            .get(room)
            .is_some_and(|members| members.peers.len() >= limits.max_peers_per_room)
        {
            return Err(Error::RoomFull {
                limit: limits.max_peers_per_room,
            });
        }
        if !rooms.contains_key(room) && rooms.len() >= limits.max_rooms {
            return Err(Error::TooManyRooms {
                limit: limits.max_rooms,
            });
        }
        if let Some(client) = client {
            clients
                .try_add(
                    client,
                    room,
                    limits.max_peers_per_client,
                    limits.max_rooms_per_client,
                )
                .map_err(|refusal| limits.client_refusal(refusal))?;
        }
        let members = rooms
            .entry(room.clone())
            .or_insert_with(|| Room { peers: Vec::new() });
        let peers = members.peers.iter().map(|p| p.info.clone()).collect();
        let overflowing = announce(&self.held, &members.peers, &announcement);
        members.peers.push(peer);
        let mut departures = Vec::new();
        evict_all(&mut state, &self.held, room, overflowing, &mut departures);
        Ok(JoinOutcome { peers, departures })
    }

    pub fn leave(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Vec<Departure>> {
        let mut state = self.rooms.lock();
        let members = state.rooms.get(room).ok_or(Error::RoomNotFound)?;
        authorize(members, peer, token)?;
        let mut departures = Vec::new();
        remove_peer(
            &mut state,
            &self.held,
            room,
            peer,
            LeaveReason::Left,
            &mut departures,
        );
        Ok(departures)
    }

    /// The peer `token` belongs to.
    pub fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId> {
        let state = self.rooms.lock();
        let members = state.rooms.get(room).ok_or(Error::RoomNotFound)?;
        identify(members, token).map(|peer| peer.info.peer_id)
    }

    pub fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: &[Outgoing],
        key: Option<&IdempotencyKey>,
    ) -> ApiResult<Sent> {
        let sender = self.identify(room, token)?;
        // Hashed outside the lock, and only for a keyed send.
        let fingerprint =
            key.map(|_| Fingerprint::of(batch.iter().map(|message| (message.to, &message.draft))));
        // Signed outside the lock: this is the only copy a message's bytes ever get.
        let signed: Vec<_> = batch
            .iter()
            .map(|message| (message.to, message.draft.sign(sender)))
            .collect();

        let mut state = self.rooms.lock();
        // The sender may have left while we signed: look it up again, by id this time.
        let members = state.rooms.get_mut(room).ok_or(Error::PeerNotFound)?;
        let sender_index = members
            .peers
            .iter()
            .position(|p| p.info.peer_id == sender)
            .ok_or(Error::PeerNotFound)?;
        let now = Instant::now();
        if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
            let recent = &mut members.peers[sender_index].recent_sends;
            match recent.recall(key, fingerprint, now) {
                Some(Recalled::Replay { accepted }) => {
                    return Ok(Sent {
                        accepted,
                        departures: Vec::new(),
                        replayed: true,
                    })
                }
                Some(Recalled::Reused) => return Err(Error::IdempotencyKeyReused),
                None => {}
            }
        }
        for (index, (to, _)) in signed.iter().enumerate() {
            match to {
                Some(to) if *to == sender => return Err(Error::SelfRecipient { index }),
                Some(to) if !members.peers.iter().any(|p| p.info.peer_id == *to) => {
                    return Err(Error::UnknownRecipient { index })
                }
                _ => {}
            }
        }
        // The whole send is charged to the sender's address at once (one ledger update, not one
        // per recipient), before anything is pushed: refused, nothing is delivered.
        let charged_to = members.peers[sender_index].client;
        let others = members.peers.len() - 1;
        let bytes: usize = signed
            .iter()
            .map(|(to, envelope)| {
                let recipients = if to.is_some() { 1 } else { others };
                envelope.encoded_len() * recipients
            })
            .sum();
        // The sender's rate first, then what the server holds (docs/API.md, Send, "Which error
        // wins"); a send the bytes refuse takes no token.
        let send_rate = &mut members.peers[sender_index].send_rate;
        let cost = signed.len() as f64;
        send_rate
            .take(cost, now)
            .map_err(|retry_after| Error::RateLimited { retry_after })?;
        if let Err(refusal) = self.held.try_charge(charged_to, bytes) {
            send_rate.give_back(cost);
            return Err(refusal);
        }

        let mut overflowing = Vec::new();
        // What was charged for pushes that were refused (their recipients are evicted).
        let mut refund = 0;
        for (to, envelope) in &signed {
            let recipients = members.peers.iter().filter(|p| match to {
                Some(to) => p.info.peer_id == *to,
                None => p.info.peer_id != sender,
            });
            for recipient in recipients {
                if recipient.mailbox.push(Arc::clone(envelope), charged_to) == Push::Full {
                    refund += envelope.encoded_len();
                    if !overflowing.contains(&recipient.info.peer_id) {
                        overflowing.push(recipient.info.peer_id);
                    }
                }
            }
        }
        if refund > 0 {
            self.held.release(charged_to, refund);
        }
        // Remembered with the append, under the same lock: a retry that comes in now finds it.
        if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
            members.peers[sender_index].recent_sends.remember(
                key.clone(),
                fingerprint,
                signed.len(),
                now,
            );
        }
        let mut departures = Vec::new();
        evict_all(&mut state, &self.held, room, overflowing, &mut departures);
        Ok(Sent {
            accepted: signed.len(),
            departures,
            replayed: false,
        })
    }

    /// The mailbox of `peer`, for the request that proves to be that peer.
    pub fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Arc<Mailbox>> {
        let state = self.rooms.lock();
        let members = state.rooms.get(room).ok_or(Error::RoomNotFound)?;
        authorize(members, peer, token).map(|peer| Arc::clone(&peer.mailbox))
    }

    pub fn room(&self, room: &RoomName) -> Option<Vec<PeerInfo>> {
        let state = self.rooms.lock();
        state
            .rooms
            .get(room)
            .map(|members| members.peers.iter().map(|p| p.info.clone()).collect())
    }

    pub fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo> {
        let state = self.rooms.lock();
        let members = state.rooms.get(room).ok_or(Error::RoomNotFound)?;
        members
            .peers
            .iter()
            .find(|p| p.info.peer_id == peer)
            .map(|p| p.info.clone())
            .ok_or(Error::PeerNotFound)
    }

    /// Removes every peer that has had no listener for `peer_timeout`.
    pub fn sweep(&self) -> Vec<(RoomName, Departure)> {
        self.sweep_at(Instant::now())
    }

    /// [`sweep`](Self::sweep) as of `now`.
    fn sweep_at(&self, now: Instant) -> Vec<(RoomName, Departure)> {
        let timeout = self.limits.peer_timeout;
        let mut state = self.rooms.lock();
        let expired: Vec<(RoomName, PeerId)> = state
            .rooms
            .iter()
            .flat_map(|(name, members)| {
                members
                    .peers
                    .iter()
                    .filter(|p| p.mailbox.idle_for(now).is_some_and(|idle| idle >= timeout))
                    .map(move |p| (name.clone(), p.info.peer_id))
            })
            .collect();
        let mut gone = Vec::new();
        for (room, peer) in expired {
            let mut departures = Vec::new();
            remove_peer(
                &mut state,
                &self.held,
                &room,
                peer,
                LeaveReason::Timeout,
                &mut departures,
            );
            gone.extend(departures.into_iter().map(|d| (room.clone(), d)));
        }
        gone
    }

    pub fn counts(&self) -> (usize, usize) {
        let state = self.rooms.lock();
        (
            state.rooms.len(),
            state
                .rooms
                .values()
                .map(|members| members.peers.len())
                .sum(),
        )
    }
}

// The memory store's operations never wait: each is a plain function call under its lock, so
// the futures below complete at their first poll.
#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ready(&self) -> ApiResult<()> {
        Ok(())
    }

    async fn charge_join(&self, client: IpAddr) -> ApiResult<()> {
        MemoryStore::charge_join(self, client)
    }

    async fn join(
        &self,
        room: &RoomName,
        peer: NewPeer,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome> {
        MemoryStore::join(self, room, peer, announcement)
    }

    async fn leave(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Vec<Departure>> {
        MemoryStore::leave(self, room, peer, token)
    }

    async fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId> {
        MemoryStore::identify(self, room, token)
    }

    async fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: &[Outgoing],
        key: Option<&IdempotencyKey>,
    ) -> ApiResult<Sent> {
        MemoryStore::send(self, room, token, batch, key)
    }

    async fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Box<dyn Reader>> {
        let mailbox = MemoryStore::reader(self, room, peer, token)?;
        Ok(Box::new(MailboxReader(mailbox)))
    }

    async fn room(&self, room: &RoomName) -> ApiResult<Option<Vec<PeerInfo>>> {
        Ok(MemoryStore::room(self, room))
    }

    async fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo> {
        MemoryStore::peer(self, room, peer)
    }

    async fn sweep(&self) -> ApiResult<Vec<(RoomName, Departure)>> {
        Ok(MemoryStore::sweep(self))
    }

    async fn counts(&self) -> ApiResult<(usize, usize)> {
        Ok(MemoryStore::counts(self))
    }
}

/// A memory mailbox as its stream or poll reads it: every call acts on the mailbox at once.
pub struct MailboxReader(pub Arc<Mailbox>);

#[async_trait]
impl Reader for MailboxReader {
    async fn subscribe(&self) -> ApiResult<Wake> {
        Ok(Wake::new(self.0.subscribe(), None))
    }

    async fn open_stream(&self, acknowledge: Option<u64>) -> ApiResult<(StreamTicket, u64)> {
        if let Some(id) = acknowledge {
            self.0.acknowledge(id);
        }
        self.0.open_stream().ok_or(Error::PeerNotFound)
    }

    async fn open_poll(&self, acknowledge: u64) -> ApiResult<(PollTicket, u64)> {
        self.0.acknowledge(acknowledge);
        self.0.open_poll().ok_or(Error::PeerNotFound)
    }

    async fn start_poll(&self, acknowledge: u64) -> ApiResult<PollStart> {
        let (listening, watcher, ticket, newest) =
            self.0.start_poll(acknowledge).ok_or(Error::PeerNotFound)?;
        Ok(PollStart {
            listening: Listening::new(listening),
            wake: Wake::new(watcher, None),
            ticket,
            newest,
        })
    }

    fn acknowledge(&self, id: u64) {
        self.0.acknowledge(id);
    }

    fn unflushed(&self) -> bool {
        false
    }

    async fn flush(&self) -> ApiResult<()> {
        Ok(())
    }

    async fn read(&self, cursor: u64, ticket: Option<Ticket>, max_bytes: usize) -> ApiResult<Read> {
        Ok(self.0.read_after(cursor, ticket, max_bytes))
    }

    fn listen(&self) -> Listening {
        Listening::new(self.0.listen())
    }

    fn may_miss_wakeups(&self) -> bool {
        false
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
        .find(|p| p.info.peer_id == peer)
        .ok_or(Error::PeerNotFound)?;
    let owner = identify(members, token)?;
    if owner.info.peer_id == target.info.peer_id {
        Ok(target)
    } else {
        Err(Error::WrongPeer)
    }
}

/// Removes `peer`, closes its mailbox and tells the others; drops the room once it is empty.
/// A `leave` that overflows another mailbox evicts that peer too, and so on. Every peer that
/// went is added to `departures`, in order.
fn remove_peer(
    state: &mut Rooms,
    held: &HeldBytes,
    room: &RoomName,
    peer: PeerId,
    reason: LeaveReason,
    departures: &mut Vec<Departure>,
) {
    let mut pending = vec![(peer, reason)];
    while let Some((peer, reason)) = pending.pop() {
        let Some(members) = state.rooms.get_mut(room) else {
            return;
        };
        let Some(index) = members.peers.iter().position(|p| p.info.peer_id == peer) else {
            continue;
        };
        let gone = members.peers.remove(index);
        gone.mailbox.close();
        if let Some(client) = gone.client {
            state.clients.remove(client, room);
        }
        departures.push(Departure {
            peer,
            reason,
            client: gone.client,
        });
        let event = leave_event(peer, reason);
        for other in announce(held, &members.peers, &event) {
            if !pending.iter().any(|(id, _)| *id == other) {
                pending.push((other, LeaveReason::Evicted));
            }
        }
        if members.peers.is_empty() {
            state.rooms.remove(room);
        }
    }
}

fn evict_all(
    state: &mut Rooms,
    held: &HeldBytes,
    room: &RoomName,
    peers: Vec<PeerId>,
    departures: &mut Vec<Departure>,
) {
    for peer in peers {
        remove_peer(state, held, room, peer, LeaveReason::Evicted, departures);
    }
}

/// Pushes a server event (`join`, `leave`) to every one of `peers`, charged to no address and
/// whatever the limits (it is the server's word, and small); returns the peers whose mailbox
/// it overflowed, to evict.
fn announce(held: &HeldBytes, peers: &[Peer], event: &Arc<EncodedMessage>) -> Vec<PeerId> {
    let size = event.encoded_len();
    held.charge(None, size * peers.len());
    let overflowing: Vec<PeerId> = peers
        .iter()
        .filter(|peer| peer.mailbox.push(Arc::clone(event), None) == Push::Full)
        .map(|peer| peer.info.peer_id)
        .collect();
    if !overflowing.is_empty() {
        held.release(None, size * overflowing.len());
    }
    overflowing
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::message::{Draft, MessageType};

    /// The output of a future that must not wait: the memory store's never do.
    fn now<F: Future>(future: F) -> F::Output {
        match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("a memory store future waited"),
        }
    }

    fn store(peer_timeout: Duration) -> MemoryStore {
        let config = Config {
            peer_timeout_secs: peer_timeout.as_secs_f64(),
            ..Config::default()
        };
        MemoryStore::new(Limits::new(&config))
    }

    /// Joins a new peer through the trait; returns its id and token.
    fn join(store: &dyn Store, room: &RoomName) -> (PeerId, PeerToken) {
        let info = PeerInfo {
            peer_id: PeerId::random(),
            name: None,
            meta: None,
        };
        let announcement = EncodedMessage::from_server("join", &info);
        let token = PeerToken::generate().unwrap();
        let id = info.peer_id;
        let peer = NewPeer {
            info,
            token: token.clone(),
            client: None,
        };
        now(store.join(room, peer, announcement)).unwrap();
        (id, token)
    }

    /// Through `dyn Store` and `dyn Reader`, a send and the recipient's read complete at their
    /// first poll, with no task switch: the memory store's relay path never waits.
    #[test]
    fn a_send_and_a_read_through_the_traits_never_wait() {
        let store = store(Duration::from_secs(10));
        let store: &dyn Store = &store;
        let room = RoomName::parse("traits").unwrap();
        let (_, alice_token) = join(store, &room);
        let (bob, bob_token) = join(store, &room);
        let reader = now(store.reader(&room, bob, Some(bob_token.reveal()))).unwrap();
        let (ticket, _) = now(reader.open_stream(None)).unwrap();
        let offer = MessageType::parse_client("offer").unwrap();
        let batch = [Outgoing {
            to: Some(bob),
            draft: Draft::new(offer, None),
        }];
        let sent = now(store.send(&room, Some(alice_token.reveal()), &batch, None)).unwrap();
        assert_eq!(sent.accepted, 1);
        let Read::Batch(batch) =
            now(reader.read(0, Some(Ticket::Stream(ticket)), 1 << 16)).unwrap()
        else {
            panic!("bob is in the room")
        };
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(batch.entries[0].message.kind(), "offer");
    }

    /// The opaque `Listening` guard a reader hands out keeps its peer present for as long as it
    /// lives, whatever the time; once it is dropped, the peer is swept `peer_timeout` later.
    #[test]
    fn a_peer_is_swept_only_after_its_listening_guard_is_dropped() {
        let timeout = Duration::from_secs(10);
        let store = store(timeout);
        let room = RoomName::parse("presence").unwrap();
        let (peer, token) = join(&store, &room);
        let reader = now(Store::reader(&store, &room, peer, Some(token.reveal()))).unwrap();
        let listening = reader.listen();
        assert!(store.sweep_at(Instant::now() + timeout * 3).is_empty());
        drop(listening);
        let dropped = Instant::now();
        assert!(store.sweep_at(dropped + timeout / 2).is_empty());
        let gone = store.sweep_at(Instant::now() + timeout);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.peer, peer);
        assert_eq!(gone[0].1.reason, LeaveReason::Timeout);
        assert_eq!(MemoryStore::counts(&store), (0, 0));
    }
}
