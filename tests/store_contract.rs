//! The store contract: what every store (memory, Redis, and those issue 18 adds) does, called
//! through the `Store` trait directly, without HTTP. It holds the semantics of docs/API.md
//! "Delivery" and "Several instances": ids, order, capacity, eviction, presence, limits, tokens,
//! resume, tickets. Each test runs once per backend (`tests/common/stores.rs`); the "several
//! instances" tests run on the shared backends only, on two stores opened on one deployment, as
//! two instances of one server.
//!
//! Adding a store means implementing the trait and passing this suite.

#[macro_use]
mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stores::Instance;
use common::EVENT_DEADLINE;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use signpost::config::Config;
use signpost::error::{ApiResult, Error};
use signpost::idempotency::IdempotencyKey;
use signpost::identity::{PeerId, PeerToken, RoomName};
use signpost::mailbox::{Read, ResetReason, Ticket};
use signpost::message::{Draft, EncodedMessage, MessageType};
use signpost::store::{
    Departure, JoinOutcome, LeaveReason, NewPeer, Outgoing, PeerInfo, Sent, Store,
};

/// The address the tests' peers join from, unless a test names another.
const HOME: &str = "192.0.2.1";

fn address(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("a valid room name")
}

/// A peer that joined: its id, and the token that proves it.
struct Peer {
    id: PeerId,
    token: String,
    client: Option<IpAddr>,
}

impl Peer {
    fn token(&self) -> Option<&str> {
        Some(&self.token)
    }
}

/// Joins `room` as the hub does (a `join` announcement with the peer's info), under `id`
/// (a resumed join) or a new id, from `client`.
async fn join_as(
    store: &dyn Store,
    room: &RoomName,
    id: Option<PeerId>,
    client: Option<IpAddr>,
) -> ApiResult<Peer> {
    join_outcome(store, room, id, client)
        .await
        .map(|(peer, _)| peer)
}

/// [`join_as`], with what the store answered.
async fn join_outcome(
    store: &dyn Store,
    room: &RoomName,
    id: Option<PeerId>,
    client: Option<IpAddr>,
) -> ApiResult<(Peer, JoinOutcome)> {
    let info = PeerInfo {
        peer_id: id.unwrap_or_else(PeerId::random),
        name: None,
        meta: None,
    };
    let token = PeerToken::generate().expect("randomness");
    let announcement = EncodedMessage::from_server("join", &info);
    let peer = Peer {
        id: info.peer_id,
        token: token.reveal().to_owned(),
        client,
    };
    let outcome = store
        .join(
            room,
            NewPeer {
                info,
                token,
                client,
            },
            announcement,
        )
        .await?;
    Ok((peer, outcome))
}

/// The size of a `join` event for a peer with no name and no meta (peer ids have one length).
fn join_event_size() -> usize {
    let info = PeerInfo {
        peer_id: PeerId::random(),
        name: None,
        meta: None,
    };
    EncodedMessage::from_server("join", &info).encoded_len()
}

/// Reads `peer`'s mailbox to its end and acknowledges it all, as a stream that wrote it does.
async fn acknowledge_all(store: &dyn Store, room: &RoomName, peer: &Peer) {
    let last = read_after(store, room, peer, 0)
        .await
        .last()
        .map_or(0, |got| got.id);
    let reader = store.reader(room, peer.id, peer.token()).await.unwrap();
    reader.acknowledge(last);
    reader
        .flush()
        .await
        .expect("the acknowledgement is applied");
}

/// A new peer of `room`, from [`HOME`]; the join must succeed.
async fn join(store: &dyn Store, room: &RoomName) -> Peer {
    join_as(store, room, None, Some(address(HOME)))
        .await
        .expect("the join succeeds")
}

/// A message of type `kind` with `data`, to `to` (`None`: every other peer).
fn message(to: Option<PeerId>, kind: &str, data: Value) -> Outgoing {
    let kind = MessageType::parse_client(kind).expect("a valid type");
    let data = RawValue::from_string(data.to_string()).expect("JSON");
    Outgoing {
        to,
        draft: Draft::new(kind, Some(&data)),
    }
}

/// Sends `batch` as `from`.
async fn send(store: &dyn Store, room: &RoomName, from: &Peer, batch: Vec<Outgoing>) -> Sent {
    store
        .send(room, from.token(), &batch, None)
        .await
        .expect("the send is accepted")
}

/// One entry as a reader gets it: its id and its envelope.
#[derive(Debug, Clone)]
struct Got {
    id: u64,
    from: Option<String>,
    kind: String,
    data: Value,
}

/// The batch a read gave (panics on `Closed` or `Replaced`): its reset, entries, and last id.
fn batch(read: Read) -> (Option<ResetReason>, Vec<Got>, u64) {
    let Read::Batch(batch) = read else {
        panic!("expected a batch, got {read:?}");
    };
    let entries = batch
        .entries
        .iter()
        .map(|entry| {
            let envelope: Value =
                serde_json::from_str(entry.message.body()).expect("an envelope is JSON");
            Got {
                id: entry.id,
                from: envelope["from"].as_str().map(str::to_owned),
                kind: envelope["type"].as_str().expect("a type").to_owned(),
                data: envelope["data"].clone(),
            }
        })
        .collect();
    (batch.reset, entries, batch.last_id)
}

/// Everything `peer`'s mailbox holds after `cursor`, read whole (the next read from the last id
/// until one comes back empty), asserting that the parts join without a gap and that the newest
/// id the mailbox reports is the last one read.
async fn read_after(store: &dyn Store, room: &RoomName, peer: &Peer, cursor: u64) -> Vec<Got> {
    let reader = store
        .reader(room, peer.id, peer.token())
        .await
        .expect("the peer's reader");
    let mut got: Vec<Got> = Vec::new();
    let mut cursor = cursor;
    loop {
        let (reset, entries, last_id) = batch(reader.read(cursor, None, usize::MAX).await.unwrap());
        assert_eq!(reset, None, "a read from {cursor} needs no reset");
        if let Some(first) = entries.first() {
            assert_eq!(first.id, cursor + 1, "no gap after {cursor}");
        }
        let Some(last) = entries.last() else {
            assert_eq!(last_id, cursor, "the newest id is the last one read");
            return got;
        };
        cursor = last.id;
        got.extend(entries);
    }
}

/// The ids of `entries`.
fn ids(entries: &[Got]) -> Vec<u64> {
    entries.iter().map(|got| got.id).collect()
}

/// The `leave` events among `entries`, as (peer id, reason).
fn leaves(entries: &[Got]) -> Vec<(String, String)> {
    entries
        .iter()
        .filter(|got| got.kind == "leave")
        .map(|got| {
            (
                got.data["peer_id"].as_str().unwrap().to_owned(),
                got.data["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The departure of `peer` for `reason`, as a store reports it.
fn departure(peer: &Peer, reason: LeaveReason) -> Departure {
    Departure {
        peer: peer.id,
        reason,
        client: peer.client,
    }
}

/// Sweeps `stores` together, over and over, until `done` says the departures reported so far
/// are what the test waits for, or [`EVENT_DEADLINE`] passes; returns every departure reported.
async fn sweep_until(
    stores: &[&Instance],
    done: impl Fn(&[(RoomName, Departure)]) -> bool,
) -> Vec<(RoomName, Departure)> {
    let deadline = Instant::now() + EVENT_DEADLINE;
    let mut gone = Vec::new();
    loop {
        let sweeps = stores.iter().map(|store| store.sweep());
        for swept in futures_util::future::join_all(sweeps).await {
            gone.extend(swept.expect("the sweep succeeds"));
        }
        if done(&gone) || Instant::now() > deadline {
            return gone;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sweeps `stores` for `period`, collecting what they report.
async fn sweep_for(stores: &[&Instance], period: Duration) -> Vec<(RoomName, Departure)> {
    let until = Instant::now() + period;
    sweep_until(stores, |_| Instant::now() > until).await
}

/// The idempotency key `text`.
fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text).expect("a valid idempotency key")
}

/// Sends `batch` as `from` under the idempotency key `key`, as a client retrying would.
async fn send_keyed(
    store: &dyn Store,
    room: &RoomName,
    from: &Peer,
    batch: &[Outgoing],
    key: &IdempotencyKey,
) -> ApiResult<Sent> {
    store.send(room, from.token(), batch, Some(key)).await
}

/// The data of what `peer`'s mailbox holds, server events left out.
async fn data_read(store: &dyn Store, room: &RoomName, peer: &Peer) -> Vec<Value> {
    read_after(store, room, peer, 0)
        .await
        .into_iter()
        .filter(|got| got.from.is_some())
        .map(|got| got.data)
        .collect()
}

/// A presence timeout short enough to wait for, long enough that a listening peer's refresh
/// (every third of it, on Redis) is never late on a loaded machine.
const PEER_TIMEOUT_SECS: f64 = 1.5;

store_contract! {
    /// Ids: a mailbox's ids start at 1 and have no gaps, in the order the messages were sent
    /// (docs/API.md, Concepts and Delivery, "Gapless ids", "Order"); the server's `join` is a
    /// mailbox message like any other.
    every async fn ids_start_at_one_and_follow_send_order(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("ids");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        for n in 0..5 {
            send(&*store, &room, &bob, vec![message(Some(alice.id), "offer", json!(n))]).await;
        }

        let got = read_after(&*store, &room, &alice, 0).await;
        assert_eq!(ids(&got), [1, 2, 3, 4, 5, 6]);
        assert_eq!(got[0].kind, "join");
        assert_eq!(got[0].data["peer_id"], json!(bob.id));
        let data: Vec<Value> = got[1..].iter().map(|got| got.data.clone()).collect();
        assert_eq!(data, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
        assert!(got[1..].iter().all(|got| got.from == Some(bob.id.to_string())));
        assert_eq!(read_after(&*store, &room, &bob, 0).await.len(), 0, "Bob was sent nothing");
    }

    /// Ids are per mailbox: a broadcast reaches every other peer once, under each mailbox's
    /// next id, and not its sender (docs/API.md, Concepts, "Mailbox"; Send, `to` absent).
    every async fn a_broadcast_reaches_every_other_peer_once(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("broadcast");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await; // Alice: 1
        let carol = join(&*store, &room).await; // Alice: 2, Bob: 1
        let sent = send(&*store, &room, &alice, vec![message(None, "hello", json!("all"))]).await;
        assert_eq!(sent.accepted, 1);
        assert_eq!(sent.departures, []);

        let hello = |got: &[Got]| -> Vec<u64> {
            got.iter().filter(|got| got.kind == "hello").map(|got| got.id).collect()
        };
        assert_eq!(hello(&read_after(&*store, &room, &alice, 0).await), Vec::<u64>::new());
        assert_eq!(hello(&read_after(&*store, &room, &bob, 0).await), [2]);
        assert_eq!(hello(&read_after(&*store, &room, &carol, 0).await), [1]);
    }

    /// `to` reaches only its target (docs/API.md, Send, `to`).
    every async fn to_reaches_only_its_target(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("targeted");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let carol = join(&*store, &room).await;
        let offer = message(Some(bob.id), "offer", json!({"sdp": "v=0"}));
        send(&*store, &room, &alice, vec![offer]).await;

        let got = read_after(&*store, &room, &bob, 0).await;
        let offers: Vec<&Got> = got.iter().filter(|got| got.kind == "offer").collect();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].data, json!({"sdp": "v=0"}));
        assert_eq!(offers[0].from, Some(alice.id.to_string()));
        for other in [&alice, &carol] {
            let got = read_after(&*store, &room, other, 0).await;
            assert!(got.iter().all(|got| got.kind != "offer"), "{got:?}");
        }
    }

    /// Order across senders: messages that several senders send at once into one mailbox get
    /// gapless ids, and each sender's arrive in the order it sent them (docs/API.md, Delivery,
    /// "Order"; within a batch, in array order).
    every async fn senders_at_once_keep_their_own_order(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("order");
        let alice = join(&*store, &room).await;
        let senders = [join(&*store, &room).await, join(&*store, &room).await];
        let rounds = 20;
        let tasks = senders.iter().map(|sender| {
            let store = Arc::clone(&store.store);
            let room = room.clone();
            let (to, token) = (alice.id, sender.token.clone());
            tokio::spawn(async move {
                for n in 0..rounds {
                    let batch = [
                        message(Some(to), "seq", json!(2 * n)),
                        message(Some(to), "seq", json!(2 * n + 1)),
                    ];
                    store.send(&room, Some(&token), &batch, None).await.expect("accepted");
                }
            })
        });
        for task in futures_util::future::join_all(tasks).await {
            task.expect("the sender finishes");
        }

        let got = read_after(&*store, &room, &alice, 0).await;
        let expected_ids: Vec<u64> = (1..=2 + 2 * 2 * rounds as u64).collect();
        assert_eq!(ids(&got), expected_ids, "gapless across senders");
        for sender in &senders {
            let seq: Vec<i64> = got
                .iter()
                .filter(|got| got.kind == "seq" && got.from == Some(sender.id.to_string()))
                .map(|got| got.data.as_i64().unwrap())
                .collect();
            assert_eq!(seq, (0..2 * rounds as i64).collect::<Vec<_>>());
        }
    }

    /// A batch is all or nothing: one bad recipient refuses the whole batch, with the index of
    /// the first bad message, and delivers none of it (docs/API.md, Errors: "a batch is
    /// accepted whole or not at all"; `unknown_recipient`, `self_recipient`).
    every async fn a_batch_with_a_bad_recipient_delivers_nothing(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("batch");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let stranger = PeerId::random();
        let refused = store
            .send(&room, alice.token(), &[
                message(Some(bob.id), "a", json!(1)),
                message(None, "b", json!(2)),
                message(Some(stranger), "c", json!(3)),
            ], None)
            .await;
        assert_eq!(refused.err(), Some(Error::UnknownRecipient { index: 2 }));
        let refused = store
            .send(&room, alice.token(), &[
                message(Some(bob.id), "a", json!(1)),
                message(Some(alice.id), "b", json!(2)),
            ], None)
            .await;
        assert_eq!(refused.err(), Some(Error::SelfRecipient { index: 1 }));
        assert_eq!(read_after(&*store, &room, &bob, 0).await.len(), 0, "nothing delivered");

        let sent = send(&*store, &room, &alice, vec![
            message(Some(bob.id), "a", json!(1)),
            message(None, "b", json!(2)),
        ]).await;
        assert_eq!(sent.accepted, 2);
        assert_eq!(ids(&read_after(&*store, &room, &bob, 0).await), [1, 2], "ids start at 1");
    }

    /// A read returns what follows its cursor, bounded by `max_bytes` but always at least one
    /// entry, and the next read from its last id continues without a gap (docs/API.md,
    /// Delivery, "Long-poll answers are bounded").
    every async fn a_read_is_bounded_in_bytes_but_carries_one_entry(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("bounded");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        // Ids 2 to 5, of different sizes: a read's budget counts each envelope as stored.
        let blob = |n: usize| message(Some(alice.id), "blob", json!("x".repeat(100 + n)));
        let size: Vec<usize> = (0..4).map(|n| blob(n).draft.signed_len()).collect();
        for n in 0..4 {
            send(&*store, &room, &bob, vec![blob(n)]).await;
        }
        let reader = store.reader(&room, alice.id, alice.token()).await.unwrap();
        let (_, got, last_id) = batch(reader.read(1, None, 0).await.unwrap());
        assert_eq!((ids(&got), last_id), (vec![2], 5), "one entry, however small the budget");
        let two = size[0] + size[1];
        let (_, got, _) = batch(reader.read(1, None, two).await.unwrap());
        assert_eq!(ids(&got), [2, 3], "exactly two blobs' bytes");
        let (_, got, _) = batch(reader.read(1, None, two + size[2] - 1).await.unwrap());
        assert_eq!(ids(&got), [2, 3], "a byte short of three");
        let (_, got, _) = batch(reader.read(3, None, size[2] + size[3]).await.unwrap());
        assert_eq!(ids(&got), [4, 5], "the next read continues after the last id");
        let (reset, got, _) = batch(reader.read(5, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (None, vec![]), "nothing follows the newest id");
    }

    /// What is acknowledged is delivered: with no replay window, a read after an
    /// acknowledgement no longer returns what it acknowledged, and a cursor before it gets the
    /// `expired` reset with what is still held; an acknowledgement beyond the newest id is
    /// clamped to it (docs/API.md, Delivery, "When a message counts as delivered", "What the
    /// mailbox keeps").
    every async fn acknowledged_entries_are_not_read_again(deployment) {
        let store = deployment.open(|config| config.replay_window = 0).await;
        let room = room("acknowledged");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        for n in 0..3 {
            send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(n))]).await;
        }
        let reader = store.reader(&room, alice.id, alice.token()).await.unwrap();
        reader.acknowledge(2);
        let (reset, got, _) = batch(reader.read(2, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (None, vec![3, 4]));
        let (reset, got, _) = batch(reader.read(0, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (Some(ResetReason::Expired), vec![3, 4]));

        // Acknowledging ids not yet assigned is clamped to the newest: what comes later is new.
        reader.acknowledge(100);
        reader.flush().await.unwrap();
        send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(3))]).await;
        let (reset, got, _) = batch(reader.read(4, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (None, vec![5]));
    }

    /// The replay window: a stream that resumes from an earlier cursor within the window gets
    /// what followed it, without a reset; a cursor behind the window gets the `expired` reset
    /// and what is held; a cursor beyond the newest id gets `ahead` (docs/API.md, Receive on a
    /// stream, "Resume", "Reset").
    every async fn the_replay_window_lets_a_stream_resume(deployment) {
        let store = deployment.open(|config| config.replay_window = 2).await;
        let room = room("replay");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        for n in 0..4 {
            send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(n))]).await;
        }
        let reader = store.reader(&room, alice.id, alice.token()).await.unwrap();
        let (_, last_id) = reader.open_stream(Some(5)).await.unwrap();
        assert_eq!(last_id, 5);
        // A stream that wrote everything was cut before the client read 4 and 5.
        let (reset, got, _) = batch(reader.read(3, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (None, vec![4, 5]));
        let (reset, got, _) = batch(reader.read(1, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (Some(ResetReason::Expired), vec![4, 5]));
        let (reset, got, last_id) = batch(reader.read(9, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got), last_id), (Some(ResetReason::Ahead), vec![], 5));
    }

    /// Capacity: a message that would take a peer's undelivered backlog past
    /// `mailbox_capacity` evicts that peer: the send succeeds, the eviction is reported once as
    /// a `Departure` with `Evicted`, the room hears `leave` with reason `evicted`, the peer's
    /// reader reads `Closed` and it is then unknown (docs/API.md, Delivery, "A peer that stops
    /// reading").
    every async fn a_full_mailbox_evicts_its_peer_once(deployment) {
        let store = deployment.open(|config| config.mailbox_capacity = 3).await;
        let room = room("capacity");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await; // Alice: 1
        let carol = join(&*store, &room).await; // Alice: 2, Bob: 1
        let alices = store.reader(&room, alice.id, alice.token()).await.unwrap();
        let sent = send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(3))]).await;
        assert_eq!(sent.departures, [], "Alice's backlog is 3: full, not over");

        let sent = send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(4))]).await;
        assert_eq!(sent.accepted, 1, "the sender's request still succeeds");
        assert_eq!(sent.departures, [departure(&alice, LeaveReason::Evicted)]);
        let sent = send(&*store, &room, &bob, vec![message(None, "after", json!(null))]).await;
        assert_eq!(sent.departures, [], "reported once");

        let evicted = vec![(alice.id.to_string(), "evicted".to_owned())];
        assert_eq!(leaves(&read_after(&*store, &room, &carol, 0).await), evicted);
        assert_eq!(leaves(&read_after(&*store, &room, &bob, 0).await), evicted);
        assert!(matches!(alices.read(0, None, usize::MAX).await, Ok(Read::Closed)));
        let gone = store.reader(&room, alice.id, alice.token()).await;
        assert_eq!(gone.err(), Some(Error::PeerNotFound));
        assert_eq!(store.counts().await.unwrap(), (1, 2));
    }

    /// Capacity bounds the undelivered backlog only: a peer that keeps reading is never cut
    /// off for the volume it receives, and its replay window keeps at most `replay_window`
    /// messages and `replay_window_bytes` (docs/API.md, Delivery, "What the mailbox keeps").
    every async fn a_peer_that_keeps_reading_is_never_cut_off(deployment) {
        let blob = |to: PeerId| message(Some(to), "blob", json!("x".repeat(300)));
        let size = blob(PeerId::random()).draft.signed_len();
        let store = deployment.open(|config| {
            config.mailbox_capacity = 3;
            config.replay_window = 3;
            config.replay_window_bytes = 2 * size;
        }).await;
        let room = room("keeps-reading");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await; // Alice: 1
        let reader = store.reader(&room, alice.id, alice.token()).await.unwrap();
        for round in 0..20u64 {
            let sent = send(&*store, &room, &bob, vec![blob(alice.id), blob(alice.id)]).await;
            assert_eq!(sent.departures, [], "round {round}");
            reader.acknowledge(1 + 2 * (round + 1));
            reader.flush().await.unwrap();
        }
        // Delivered: 41 messages; the window keeps the last two blobs (its bytes), not three.
        let (reset, got, _) = batch(reader.read(39, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (None, vec![40, 41]));
        let (reset, got, _) = batch(reader.read(38, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (Some(ResetReason::Expired), vec![40, 41]));
    }

    /// Capacity in bytes: a message that would take a peer's undelivered bytes past
    /// `mailbox_max_bytes` evicts it as a full mailbox does, reported once (docs/API.md,
    /// Delivery, "What the mailbox keeps", "A peer that stops reading").
    every async fn a_mailbox_over_its_bytes_evicts_its_peer(deployment) {
        let store = deployment.open(|config| config.mailbox_max_bytes = 600).await;
        let room = room("bytes");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await; // Alice: a `join` of under 100 bytes
        let carol = join(&*store, &room).await; // and another
        let blob = || message(Some(alice.id), "blob", json!("x".repeat(200)));
        let sent = send(&*store, &room, &bob, vec![blob()]).await;
        assert_eq!(sent.departures, [], "about 450 bytes of 600");

        let sent = send(&*store, &room, &bob, vec![blob()]).await;
        assert_eq!(sent.departures, [departure(&alice, LeaveReason::Evicted)]);
        let sent = send(&*store, &room, &carol, vec![message(None, "after", json!(null))]).await;
        assert_eq!(sent.departures, [], "reported once");
        let evicted = vec![(alice.id.to_string(), "evicted".to_owned())];
        assert_eq!(leaves(&read_after(&*store, &room, &carol, 0).await), evicted);
        assert_eq!(store.peer(&room, alice.id).await.err(), Some(Error::PeerNotFound));
    }

    /// Presence: a peer whose `Listening` guard lives is not swept; one without a listener is
    /// removed after `peer_timeout`, reported by exactly one sweep with `Timeout`, and the room
    /// hears `leave` with reason `timeout`; once its guard is dropped, the listening peer times
    /// out too, `peer_timeout` after that at the earliest, and the room goes (docs/API.md,
    /// Delivery, "Presence").
    every async fn a_silent_peer_is_swept_once_and_a_listening_one_is_not(deployment) {
        let store = deployment.open(|config| config.peer_timeout_secs = PEER_TIMEOUT_SECS).await;
        let opened = Instant::now();
        let room = room("presence");
        let alice = join(&*store, &room).await;
        let alices = store.reader(&room, alice.id, alice.token()).await.unwrap();
        let listening = alices.listen();
        let bob = join(&*store, &room).await;

        let gone = sweep_until(&[&store], |gone| !gone.is_empty()).await;
        assert_eq!(gone, [(room.clone(), departure(&bob, LeaveReason::Timeout))]);
        let timeout = Duration::from_secs_f64(PEER_TIMEOUT_SECS);
        let later = sweep_for(&[&store], 2 * timeout).await;
        assert_eq!(later, [], "Bob is reported once; Alice listens");
        assert_eq!(store.room(&room).await.unwrap().unwrap().len(), 1);
        let timed_out = vec![(bob.id.to_string(), "timeout".to_owned())];
        assert_eq!(leaves(&read_after(&*store, &room, &alice, 0).await), timed_out);

        // Alice stops listening midway between two of the Redis instance's periodic refreshes
        // (every third of the timeout since it opened), so that only the refresh her guard
        // makes as it goes can make her timeout count from then.
        let period = timeout / 3;
        let mut midway = period / 2;
        while midway < opened.elapsed() {
            midway += period;
        }
        tokio::time::sleep_until((opened + midway).into()).await;
        let stopped = Instant::now();
        drop(listening);
        let gone = sweep_until(&[&store], |gone| !gone.is_empty()).await;
        assert_eq!(gone, [(room.clone(), departure(&alice, LeaveReason::Timeout))]);
        // Counted from when she stopped listening (the guard's last refresh, on Redis), not
        // from the periodic refresh before it.
        assert!(
            stopped.elapsed() >= timeout,
            "Alice timed out {:?} after she stopped listening",
            stopped.elapsed()
        );
        assert_eq!(store.room(&room).await.unwrap().map(|peers| peers.len()), None);
        assert_eq!(store.counts().await.unwrap(), (0, 0));
    }

    /// `max_peers_per_room`: a join to a full room is `RoomFull`, and changes nothing: no peer,
    /// no `join` event for those in the room, the same counts, and nothing counted against the
    /// address (docs/API.md, Limits, "Which error wins": "A refused join changes nothing and
    /// holds nothing").
    every async fn a_full_room_refuses_a_join_and_changes_nothing(deployment) {
        let store = deployment.open(|config| {
            config.max_peers_per_room = 2;
            config.max_peers_per_client = 3;
        }).await;
        let room = room("full");
        let alice = join(&*store, &room).await;
        join(&*store, &room).await;
        let before = store.counts().await.unwrap();
        assert_eq!(before, (1, 2));
        for _ in 0..3 {
            let refused = join_as(&*store, &room, None, Some(address(HOME))).await;
            assert_eq!(refused.err(), Some(Error::RoomFull { limit: 2 }));
        }
        assert_eq!(store.counts().await.unwrap(), before);
        assert_eq!(store.room(&room).await.unwrap().unwrap().len(), 2);
        assert_eq!(read_after(&*store, &room, &alice, 0).await.len(), 1, "one join, Bob's");
        join(&*store, &self::room("elsewhere")).await; // the address's third peer of three
    }

    /// `max_rooms`: a join that would create a room past it is `TooManyRooms`; joining a room
    /// that exists is not refused for it; the refusal changes nothing (docs/API.md, Limits).
    every async fn max_rooms_refuses_a_new_room_only(deployment) {
        let store = deployment.open(|config| config.max_rooms = 1).await;
        join(&*store, &room("first")).await;
        let refused = join_as(&*store, &room("second"), None, Some(address(HOME))).await;
        assert_eq!(refused.err(), Some(Error::TooManyRooms { limit: 1 }));
        assert_eq!(store.counts().await.unwrap(), (1, 1));
        assert!(store.room(&room("second")).await.unwrap().is_none());
        join(&*store, &room("first")).await;
        assert_eq!(store.counts().await.unwrap(), (1, 2));
    }

    /// `max_peers_per_client`: an address holding that many peers is refused another with
    /// `TooManyPeersForClient` (other addresses, and joins counted to none, are not), which
    /// changes nothing; one of its peers
    /// leaving gives the place back, at the latest one round trip later (docs/API.md, Limits
    /// per client; Several instances).
    every async fn peers_per_client_are_limited(deployment) {
        let store = deployment.open(|config| config.max_peers_per_client = 2).await;
        let room = room("client-peers");
        let home = Some(address(HOME));
        let first = join(&*store, &room).await;
        join(&*store, &room).await;
        let refused = join_as(&*store, &room, None, home).await;
        assert!(
            matches!(refused.err(), Some(Error::TooManyPeersForClient { limit: 2, .. })),
            "the address holds 2 peers"
        );
        assert_eq!(store.counts().await.unwrap(), (1, 2));
        join_as(&*store, &room, None, Some(address("2001:db8::1"))).await.expect("another address");
        join_as(&*store, &room, None, None).await.expect("a join of no address is not counted");

        store.leave(&room, first.id, first.token()).await.unwrap();
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            match join_as(&*store, &room, None, home).await {
                Ok(_) => break,
                Err(Error::TooManyPeersForClient { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(error) => panic!("the place is given back, but: {error:?}"),
            }
        }
    }

    /// `max_rooms_per_client`: an address with peers in that many rooms is refused a join to
    /// another with `TooManyRoomsForClient`, not one to a room where it has a peer
    /// (docs/API.md, Limits per client).
    every async fn rooms_per_client_are_limited(deployment) {
        let store = deployment.open(|config| config.max_rooms_per_client = 2).await;
        join(&*store, &room("one")).await;
        join(&*store, &room("two")).await;
        let refused = join_as(&*store, &room("three"), None, Some(address(HOME))).await;
        assert!(
            matches!(refused.err(), Some(Error::TooManyRoomsForClient { limit: 2, .. })),
            "the address has peers in 2 rooms"
        );
        assert_eq!(store.counts().await.unwrap(), (2, 2));
        join(&*store, &room("one")).await;
        assert_eq!(store.counts().await.unwrap(), (2, 3));
    }

    /// The join rate: `charge_join` and every `join` take from the address's bucket of
    /// `join_burst`; past it, both answer `TooManyJoins` with a `retry_after`, and a refused join
    /// changes nothing; another address has its own bucket (docs/API.md, Limits per client).
    every async fn joins_are_charged_to_the_address_rate(deployment) {
        let store = deployment.open(|config| {
            config.join_burst = 3.0;
            config.join_rate_per_sec = 0.01;
        }).await;
        let room = room("join-rate");
        let home = address(HOME);
        store.charge_join(home).await.expect("1 of 3");
        join(&*store, &room).await; // 2 of 3
        store.charge_join(home).await.expect("3 of 3");
        match store.charge_join(home).await {
            Err(Error::TooManyJoins { retry_after }) => assert!(retry_after > Duration::ZERO),
            other => panic!("expected too_many_joins, got {other:?}"),
        }
        let refused = join_as(&*store, &room, None, Some(home)).await;
        assert!(matches!(refused.err(), Some(Error::TooManyJoins { .. })));
        assert_eq!(store.counts().await.unwrap(), (1, 1));
        join_as(&*store, &room, None, Some(address("198.51.100.9"))).await.expect("its own bucket");
    }

    /// The send rate: each message costs one token of the sender's bucket of `send_burst`; a
    /// batch that does not fit is refused whole with `RateLimited`, delivering nothing; a
    /// refused batch takes no tokens (docs/API.md, Send; Errors: "A request that fails changes
    /// nothing").
    every async fn a_batch_over_the_send_rate_is_refused_whole(deployment) {
        let store = deployment.open(|config| {
            config.send_burst = 3.0;
            config.send_rate_per_sec = 0.01;
        }).await;
        let room = room("send-rate");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let four: Vec<Outgoing> = (0..4).map(|n| message(Some(bob.id), "n", json!(n))).collect();
        let refused = store.send(&room, alice.token(), &four, None).await;
        assert!(matches!(refused, Err(Error::RateLimited { .. })), "4 > 3");
        assert_eq!(read_after(&*store, &room, &bob, 0).await.len(), 0);
        let mut bad: Vec<Outgoing> = (0..2).map(|n| message(Some(bob.id), "n", json!(n))).collect();
        bad.push(message(Some(PeerId::random()), "n", json!(2)));
        let refused = store.send(&room, alice.token(), &bad, None).await;
        assert_eq!(refused.err(), Some(Error::UnknownRecipient { index: 2 }), "charged nothing");
        let three: Vec<Outgoing> = (0..3).map(|n| message(Some(bob.id), "n", json!(n))).collect();
        assert_eq!(send(&*store, &room, &alice, three).await.accepted, 3);
        let one = [message(Some(bob.id), "n", json!(3))];
        let refused = store.send(&room, alice.token(), &one, None).await;
        assert!(matches!(refused, Err(Error::RateLimited { .. })));
        assert_eq!(ids(&read_after(&*store, &room, &bob, 0).await), [1, 2, 3]);
    }

    /// Eviction by the server's own events: a `join` announcement or a `leave` that would take a
    /// peer's backlog past `mailbox_capacity` evicts that peer, reported (with the leave that
    /// caused it) in the answer of the join or leave that overflowed it; peers that keep reading
    /// are not evicted (docs/API.md, Delivery, "A peer that stops reading").
    every async fn server_events_evict_a_peer_that_stopped_reading(deployment) {
        let store = deployment.open(|config| config.mailbox_capacity = 2).await;
        let room = room("announced");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await; // Alice: 1
        let carol = join(&*store, &room).await; // Alice: 2 (full), Bob: 1
        acknowledge_all(&*store, &room, &bob).await;
        let (dave, outcome) =
            join_outcome(&*store, &room, None, Some(address(HOME))).await.unwrap();
        let before: Vec<PeerId> = outcome.peers.iter().map(|peer| peer.peer_id).collect();
        assert_eq!(before, [alice.id, bob.id, carol.id], "the peers already there, in join order");
        assert_eq!(outcome.departures, [departure(&alice, LeaveReason::Evicted)]);
        // Bob: join(Dave), leave(Alice), both undelivered; Carol too; Dave: leave(Alice).
        acknowledge_all(&*store, &room, &dave).await;

        let departures = store.leave(&room, carol.id, carol.token()).await.unwrap();
        assert_eq!(
            departures,
            [departure(&carol, LeaveReason::Left), departure(&bob, LeaveReason::Evicted)]
        );
        let peers: Vec<PeerId> =
            store.room(&room).await.unwrap().unwrap().iter().map(|peer| peer.peer_id).collect();
        assert_eq!(peers, [dave.id]);
        let heard = leaves(&read_after(&*store, &room, &dave, 0).await);
        let expected = [(&alice, "evicted"), (&carol, "left"), (&bob, "evicted")]
            .map(|(peer, reason)| (peer.id.to_string(), reason.to_owned()));
        assert_eq!(heard, expected);
    }

    /// What the server holds, per sender: a send that would take the bytes held in mailboxes
    /// for its address past `client_max_held_bytes` is refused whole with `TooManyBytesHeld`,
    /// delivering nothing; other addresses are not held to it; once the recipient has read and
    /// its replay window moved on, the sender may send again (docs/API.md, Delivery, "What the
    /// server holds").
    every async fn bytes_held_for_a_sender_address_are_bounded(deployment) {
        let blob = |to: PeerId| message(Some(to), "blob", json!("x".repeat(500)));
        let size = blob(PeerId::random()).draft.signed_len();
        let limit = 2 * size + size / 2;
        let store = deployment.open(|config| {
            config.client_max_held_bytes = limit;
            config.replay_window = 0;
        }).await;
        let room = room("held");
        let bob = join(&*store, &room).await;
        let alice = join(&*store, &room).await; // Bob: 1, charged to no address
        let carol = join_as(&*store, &room, None, Some(address("198.51.100.7"))).await.unwrap();
        send(&*store, &room, &alice, vec![blob(bob.id)]).await;
        send(&*store, &room, &alice, vec![blob(bob.id)]).await;
        let refused = store.send(&room, alice.token(), &[blob(bob.id)], None).await;
        assert_eq!(refused.err(), Some(Error::TooManyBytesHeld { limit }));
        let refused = store.send(&room, alice.token(), &[blob(carol.id)], None).await;
        assert_eq!(refused.err(), Some(Error::TooManyBytesHeld { limit }), "whoever it is for");
        send(&*store, &room, &carol, vec![blob(bob.id)]).await;
        // Bob: join(Alice), join(Carol), two of Alice's, one of Carol's.
        assert_eq!(ids(&read_after(&*store, &room, &bob, 0).await), [1, 2, 3, 4, 5]);

        acknowledge_all(&*store, &room, &bob).await;
        send(&*store, &room, &alice, vec![blob(bob.id)]).await;
    }

    /// Which send refusal wins: a send over the sender's rate and over its address's held
    /// bytes at once answers `RateLimited`, the sender's own pacing, checked before what the
    /// server holds; and a send over only the bytes then takes no token (docs/API.md, Send,
    /// "Which error wins").
    every async fn the_send_rate_wins_over_the_bytes_held(deployment) {
        let blob = |to: PeerId| message(Some(to), "blob", json!("x".repeat(500)));
        let size = blob(PeerId::random()).draft.signed_len();
        let limit = 2 * size + size / 2;
        let store = deployment.open(|config| {
            config.client_max_held_bytes = limit;
            config.send_burst = 3.0;
            config.send_rate_per_sec = 0.01;
        }).await;
        let room = room("both-limits");
        let bob = join(&*store, &room).await;
        let alice = join(&*store, &room).await;
        send(&*store, &room, &alice, vec![blob(bob.id)]).await;
        send(&*store, &room, &alice, vec![blob(bob.id)]).await;
        let refused = store.send(&room, alice.token(), &[blob(bob.id)], None).await;
        assert_eq!(refused.err(), Some(Error::TooManyBytesHeld { limit }), "one token left");
        let two = [blob(bob.id), blob(bob.id)];
        let refused = store.send(&room, alice.token(), &two, None).await;
        assert!(matches!(refused.err(), Some(Error::RateLimited { .. })), "over both");
        let small = vec![message(Some(bob.id), "n", json!(1))];
        assert_eq!(send(&*store, &room, &alice, small).await.accepted, 1, "the token left");
    }

    /// What the server holds is given back when its mailbox goes: once the recipient left, the
    /// bytes sent to it no longer count against the sender's address (docs/API.md, Delivery,
    /// "What the server holds": "until they leave the mailbox (..., or the mailbox's peer
    /// gone)").
    every async fn bytes_held_are_released_when_the_recipient_goes(deployment) {
        let blob = |to: PeerId| message(Some(to), "blob", json!("x".repeat(500)));
        let size = blob(PeerId::random()).draft.signed_len();
        let limit = 2 * size + size / 2;
        let store = deployment.open(|config| config.client_max_held_bytes = limit).await;
        let room = room("released");
        let alice = join(&*store, &room).await;
        let bob = join_as(&*store, &room, None, Some(address("198.51.100.7"))).await.unwrap();
        let carol = join_as(&*store, &room, None, Some(address("198.51.100.8"))).await.unwrap();
        send(&*store, &room, &alice, vec![blob(bob.id), blob(bob.id)]).await;
        let refused = store.send(&room, alice.token(), &[blob(carol.id)], None).await;
        assert_eq!(refused.err(), Some(Error::TooManyBytesHeld { limit }));
        store.leave(&room, bob.id, bob.token()).await.unwrap();
        send(&*store, &room, &alice, vec![blob(carol.id), blob(carol.id)]).await;
    }

    /// What the server holds, in all: a send that would take the bytes held in every mailbox
    /// (the server's `join` and `leave` events included) past `max_held_bytes` is refused
    /// whole with `ServerFull`, whoever sends it; reading makes room (docs/API.md, Delivery,
    /// "What the server holds").
    every async fn bytes_held_in_all_mailboxes_are_bounded(deployment) {
        let blob = |to: PeerId| message(Some(to), "blob", json!("x".repeat(500)));
        let size = blob(PeerId::random()).draft.signed_len();
        // Three `join` events: Alice's of Bob and Carol, Bob's of Carol.
        let limit = 3 * join_event_size() + 2 * size + size / 2;
        let store = deployment.open(|config| {
            config.max_held_bytes = limit;
            config.replay_window = 0;
        }).await;
        let room = room("server-full");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let carol = join_as(&*store, &room, None, Some(address("198.51.100.7"))).await.unwrap();
        send(&*store, &room, &alice, vec![blob(bob.id)]).await;
        send(&*store, &room, &alice, vec![blob(bob.id)]).await;
        let refused = store.send(&room, alice.token(), &[blob(bob.id)], None).await;
        assert_eq!(refused.err(), Some(Error::ServerFull));
        let refused = store.send(&room, carol.token(), &[blob(alice.id)], None).await;
        assert_eq!(refused.err(), Some(Error::ServerFull), "from another address too");
        assert_eq!(ids(&read_after(&*store, &room, &bob, 0).await), [1, 2, 3], "nothing more");

        acknowledge_all(&*store, &room, &bob).await;
        send(&*store, &room, &carol, vec![blob(alice.id)]).await;
    }

    /// Which error wins among the room's and the address's: a join to a full room is
    /// `RoomFull`, and one that would create a room past `max_rooms` `TooManyRooms`, even from
    /// an address at its own limits (docs/API.md, Limits per client, "Which error wins").
    every async fn the_room_is_checked_before_the_address(deployment) {
        let store = deployment.open(|config| {
            config.max_peers_per_room = 2;
            config.max_rooms = 1;
            config.max_peers_per_client = 2;
            config.max_rooms_per_client = 1;
        }).await;
        let room = room("precedence");
        join(&*store, &room).await;
        join(&*store, &room).await;
        let refused = join_as(&*store, &room, None, Some(address(HOME))).await;
        assert_eq!(refused.err(), Some(Error::RoomFull { limit: 2 }));
        let refused = join_as(&*store, &self::room("another"), None, Some(address(HOME))).await;
        assert_eq!(refused.err(), Some(Error::TooManyRooms { limit: 1 }));
        assert_eq!(store.counts().await.unwrap(), (1, 2));
    }

    /// A room and a peer are described as joined: the room's peers in join order, with their
    /// name and meta, a peer by its id; neither is there once gone (docs/API.md, Look at a
    /// room, Look at a peer).
    every async fn rooms_and_peers_are_described_in_join_order(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("described");
        let mut ids = Vec::new();
        for (name, meta) in [("Alice", Some(r#"{"avatar":"a.png"}"#)), ("Bob", None)] {
            let info = PeerInfo {
                peer_id: PeerId::random(),
                name: Some(name.to_owned()),
                meta: meta.map(|meta| RawValue::from_string(meta.to_owned()).unwrap()),
            };
            ids.push(info.peer_id);
            let announcement = EncodedMessage::from_server("join", &info);
            let token = PeerToken::generate().unwrap();
            store.join(&room, NewPeer { info, token, client: None }, announcement).await.unwrap();
        }
        let peers = store.room(&room).await.unwrap().expect("the room");
        let described = serde_json::to_value(&peers).unwrap();
        assert_eq!(described, json!([
            {"peer_id": ids[0], "name": "Alice", "meta": {"avatar": "a.png"}},
            {"peer_id": ids[1], "name": "Bob"},
        ]));
        let bob = serde_json::to_value(store.peer(&room, ids[1]).await.unwrap()).unwrap();
        assert_eq!(bob, json!({"peer_id": ids[1], "name": "Bob"}));
        assert_eq!(store.peer(&room, PeerId::random()).await.err(), Some(Error::PeerNotFound));
        let nowhere = store.peer(&self::room("nowhere"), ids[0]).await;
        assert_eq!(nowhere.err(), Some(Error::RoomNotFound));
        assert!(store.room(&self::room("nowhere")).await.unwrap().is_none());
        assert_eq!(store.ready().await, Ok(()));
    }

    /// Tokens: `identify`, `reader`, `send` and `leave` with no token are `MissingToken`, with
    /// a token of nobody in the room `InvalidToken`, with another peer's `WrongPeer` (where a
    /// peer is named); a peer or room that is not there is `PeerNotFound` / `RoomNotFound`.
    /// A refused leave removes nobody (docs/API.md, Authentication; Errors).
    every async fn tokens_are_checked_as_documented(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("tokens");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let nobody = "0".repeat(64);

        assert_eq!(store.identify(&room, alice.token()).await, Ok(alice.id));
        assert_eq!(store.identify(&room, None).await, Err(Error::MissingToken));
        assert_eq!(store.identify(&room, Some(&nobody)).await, Err(Error::InvalidToken));
        let elsewhere = RoomName::parse("elsewhere").unwrap();
        assert_eq!(store.identify(&elsewhere, alice.token()).await, Err(Error::RoomNotFound));

        let reader = |peer: PeerId, token: Option<&str>| {
            let store = Arc::clone(&store.store);
            let (room, token) = (room.clone(), token.map(str::to_owned));
            async move { store.reader(&room, peer, token.as_deref()).await.err() }
        };
        assert_eq!(reader(alice.id, None).await, Some(Error::MissingToken));
        assert_eq!(reader(alice.id, Some(&nobody)).await, Some(Error::InvalidToken));
        assert_eq!(reader(alice.id, bob.token()).await, Some(Error::WrongPeer));
        assert_eq!(reader(PeerId::random(), alice.token()).await, Some(Error::PeerNotFound));
        assert_eq!(reader(alice.id, alice.token()).await, None);
        let nowhere = store.reader(&elsewhere, alice.id, alice.token()).await;
        assert_eq!(nowhere.err(), Some(Error::RoomNotFound));
        let nowhere = store.leave(&elsewhere, alice.id, alice.token()).await;
        assert_eq!(nowhere.err(), Some(Error::RoomNotFound));

        let hello = [message(None, "hello", json!(null))];
        assert_eq!(store.send(&room, None, &hello, None).await.err(), Some(Error::MissingToken));
        assert_eq!(store.send(&room, Some(&nobody), &hello, None).await.err(), Some(Error::InvalidToken));
        let nowhere = store.send(&elsewhere, alice.token(), &hello, None).await;
        assert_eq!(nowhere.err(), Some(Error::RoomNotFound));

        assert_eq!(store.leave(&room, alice.id, None).await, Err(Error::MissingToken));
        assert_eq!(store.leave(&room, alice.id, Some(&nobody)).await, Err(Error::InvalidToken));
        assert_eq!(store.leave(&room, alice.id, bob.token()).await, Err(Error::WrongPeer));
        assert_eq!(store.counts().await.unwrap(), (1, 2), "nobody left");
        assert_eq!(read_after(&*store, &room, &bob, 0).await.len(), 0, "no leave event");
    }

    /// Leave: a peer that leaves with its token is reported once as `Left`, the room hears
    /// `leave` with reason `left`, its reader reads `Closed` and can open no stream or poll,
    /// and its token no longer identifies anyone; the last peer to leave removes the room
    /// (docs/API.md, Leave; Concepts, "Room").
    every async fn a_peer_that_leaves_is_reported_once(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("leaving");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let alices = store.reader(&room, alice.id, alice.token()).await.unwrap();

        let departures = store.leave(&room, alice.id, alice.token()).await.unwrap();
        assert_eq!(departures, [departure(&alice, LeaveReason::Left)]);
        assert!(matches!(alices.read(0, None, usize::MAX).await, Ok(Read::Closed)));
        assert!(matches!(alices.open_poll(0).await, Err(Error::PeerNotFound)));
        assert!(matches!(alices.open_stream(None).await, Err(Error::PeerNotFound)));
        assert_eq!(store.identify(&room, alice.token()).await, Err(Error::InvalidToken));
        assert_eq!(store.leave(&room, alice.id, bob.token()).await, Err(Error::PeerNotFound));
        let left = vec![(alice.id.to_string(), "left".to_owned())];
        assert_eq!(leaves(&read_after(&*store, &room, &bob, 0).await), left);

        store.leave(&room, bob.id, bob.token()).await.unwrap();
        assert!(store.room(&room).await.unwrap().is_none());
        assert_eq!(store.counts().await.unwrap(), (0, 0));
        assert_eq!(store.identify(&room, bob.token()).await, Err(Error::RoomNotFound));
    }

    /// Resume: a peer id that left can join again (a `NewPeer` with that id); the room hears
    /// `join` for it, its old token is gone, and its new mailbox is empty with ids starting
    /// again at 1 (docs/API.md, Concepts, "Peer"; Restarts and resuming).
    every async fn a_peer_that_left_can_join_again_under_its_id(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("resumed");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(1))]).await;
        store.leave(&room, alice.id, alice.token()).await.unwrap();

        let again = join_as(&*store, &room, Some(alice.id), Some(address(HOME))).await.unwrap();
        assert_eq!(again.id, alice.id);
        assert_eq!(store.identify(&room, alice.token()).await, Err(Error::InvalidToken));
        assert_eq!(store.identify(&room, again.token()).await, Ok(alice.id));
        assert_eq!(read_after(&*store, &room, &again, 0).await.len(), 0, "a new, empty mailbox");
        send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(2))]).await;
        let got = read_after(&*store, &room, &again, 0).await;
        assert_eq!((ids(&got), got[0].data.clone()), (vec![1], json!(2)));
        let bobs = read_after(&*store, &room, &bob, 0).await;
        let kinds: Vec<(&str, Value)> =
            bobs.iter().map(|got| (got.kind.as_str(), got.data["peer_id"].clone())).collect();
        assert_eq!(kinds, [("leave", json!(alice.id)), ("join", json!(alice.id))]);
    }

    /// Resume of a present id: a join under the id of a peer in the room is `PeerPresent` and
    /// changes nothing, and it wins over every limit: a full room, the address's peers
    /// (docs/API.md, Limits per client, "Which error wins": "a resumed join of a peer that is
    /// present answers `409 peer_present` even from an address at its limits").
    every async fn a_present_id_is_peer_present_whatever_the_limits(deployment) {
        let store = deployment.open(|config| {
            config.max_peers_per_room = 2;
            config.max_peers_per_client = 2;
        }).await;
        let room = room("present");
        let alice = join(&*store, &room).await;
        join(&*store, &room).await;
        let refused = join_as(&*store, &room, Some(alice.id), Some(address(HOME))).await;
        assert_eq!(refused.err(), Some(Error::PeerPresent));
        assert_eq!(store.counts().await.unwrap(), (1, 2));
        let alices = store.identify(&room, alice.token()).await;
        assert_eq!(alices, Ok(alice.id), "Alice keeps her place");
    }

    /// Tickets: a newer stream replaces the older (its reads are `Replaced`), a newer poll the
    /// older poll, and a poll and a stream do not end each other (docs/API.md, Receive on a
    /// stream, "One live stream per peer"; Delivery, "A peer has one poll in flight").
    every async fn a_newer_reader_replaces_the_older_of_its_kind(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("tickets");
        let alice = join(&*store, &room).await;
        let reader = store.reader(&room, alice.id, alice.token()).await.unwrap();
        let read = |ticket| {
            let reader = &reader;
            async move { reader.read(0, Some(ticket), usize::MAX).await.unwrap() }
        };
        let (first, _) = reader.open_stream(None).await.unwrap();
        let (poll, _) = reader.open_poll(0).await.unwrap();
        let (second, _) = reader.open_stream(None).await.unwrap();
        assert!(matches!(read(Ticket::Stream(first)).await, Read::Replaced));
        assert!(matches!(read(Ticket::Stream(second)).await, Read::Batch(_)));
        assert!(matches!(read(Ticket::Poll(poll)).await, Read::Batch(_)), "a stream ends no poll");
        let (newer, _) = reader.open_poll(0).await.unwrap();
        assert!(matches!(read(Ticket::Poll(poll)).await, Read::Replaced));
        assert!(matches!(read(Ticket::Poll(newer)).await, Read::Batch(_)));
        let stream = read(Ticket::Stream(second)).await;
        assert!(matches!(stream, Read::Batch(_)), "a poll ends no stream");
    }

    /// Opening a stream or a poll answers the mailbox's newest id, the `last_id` a read then
    /// reports: a poll whose open saw nothing after its `after` waits without reading
    /// (src/front/poll.rs), so an open that answered too low would leave a message waiting.
    every async fn an_open_answers_the_newest_id(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("newest");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let to_alice = |n: i64| message(Some(alice.id), "n", json!(n));
        send(&*store, &room, &bob, vec![to_alice(1), to_alice(2)]).await;
        let reader = store.reader(&room, alice.id, alice.token()).await.unwrap();
        let (_, got, _) = batch(reader.read(0, None, usize::MAX).await.unwrap());
        let newest = got.last().map(|entry| entry.id).expect("bob's join and two messages");
        assert_eq!(got.len(), 3, "bob's join and two messages");
        let (_, polled) = reader.open_poll(0).await.unwrap();
        assert_eq!(polled, newest);
        let (_, streamed) = reader.open_stream(None).await.unwrap();
        assert_eq!(streamed, newest);
        send(&*store, &room, &bob, vec![to_alice(3)]).await;
        let (_, polled) = reader.open_poll(newest).await.unwrap();
        assert_eq!(polled, newest + 1, "a message sent since");
    }

    /// Wake-ups: a reader that subscribed before reading is woken by a message sent after the
    /// read, and then reads it (src/store: "Subscribe before the first read").
    every async fn a_send_wakes_a_subscribed_reader(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("wake");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let reader = store.reader(&room, alice.id, alice.token()).await.unwrap();
        let mut wake = reader.subscribe().await.unwrap();
        wake.mark_seen();
        let (_, got, _) = batch(reader.read(0, None, usize::MAX).await.unwrap());
        assert_eq!(ids(&got), [1]);
        send(&*store, &room, &bob, vec![message(Some(alice.id), "n", json!(1))]).await;
        tokio::time::timeout(EVENT_DEADLINE, wake.changed()).await.expect("woken").expect("open");
        let (_, got, _) = batch(reader.read(1, None, usize::MAX).await.unwrap());
        assert_eq!(ids(&got), [2]);
    }

    /// Idempotency (docs/API.md, Send, "Retrying a send"): a send retried under its key is
    /// answered as the first (same count, marked replayed), appends nothing and charges neither
    /// the sender's rate nor its bytes: the retries below would be past a burst of 2 and past
    /// `client_max_held_bytes` if they were sent again.
    every async fn a_keyed_send_retried_is_answered_again_and_delivered_once(deployment) {
        let store = deployment.open(|config| {
            config.send_burst = 2.0;
            config.send_rate_per_sec = 0.01;
            config.max_message_bytes = 256;
            config.client_max_held_bytes = 1024;
        }).await;
        let room = room("idempotent");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let batch = [message(Some(bob.id), "offer", json!("sdp")), message(None, "ice", json!(1))];
        let once = key("send-1");
        let first = send_keyed(&*store, &room, &alice, &batch, &once).await.expect("accepted");
        assert_eq!((first.accepted, first.replayed), (2, false));
        for _ in 0..20 {
            let again = send_keyed(&*store, &room, &alice, &batch, &once).await.expect("replayed");
            assert_eq!((again.accepted, again.replayed), (2, true));
            assert!(again.departures.is_empty());
        }
        assert_eq!(data_read(&*store, &room, &bob).await, [json!("sdp"), json!(1)]);
        let refused = store.send(&room, alice.token(), &[message(Some(bob.id), "n", json!(0))], None).await;
        assert!(matches!(refused, Err(Error::RateLimited { .. })), "the first send took the burst");
    }

    /// Idempotency: the same key with another batch is refused (`IdempotencyKeyReused`) and
    /// delivers nothing; a refused keyed send is not remembered, so its retry is tried for real
    /// (docs/API.md, Send, "Retrying a send").
    every async fn a_key_reused_for_another_batch_is_refused_and_refusals_are_not_kept(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("reused-key");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let used = key("k1");
        send_keyed(&*store, &room, &alice, &[message(Some(bob.id), "n", json!(1))], &used)
            .await
            .expect("accepted");
        let other = [message(Some(bob.id), "n", json!(2))];
        let refused = send_keyed(&*store, &room, &alice, &other, &used).await;
        assert_eq!(refused.err(), Some(Error::IdempotencyKeyReused));
        let to_bob = [message(None, "n", json!(1))];
        let refused = send_keyed(&*store, &room, &alice, &to_bob, &used).await;
        assert_eq!(refused.err(), Some(Error::IdempotencyKeyReused), "the recipient is part of it");
        assert_eq!(data_read(&*store, &room, &bob).await, [json!(1)]);

        let fresh = key("k2");
        let stranger = [message(Some(PeerId::random()), "n", json!(3))];
        let refused = send_keyed(&*store, &room, &alice, &stranger, &fresh).await;
        assert_eq!(refused.err(), Some(Error::UnknownRecipient { index: 0 }));
        let retried = send_keyed(&*store, &room, &alice, &[message(Some(bob.id), "n", json!(3))], &fresh)
            .await
            .expect("the refusal was not remembered");
        assert!(!retried.replayed);
        assert_eq!(data_read(&*store, &room, &bob).await, [json!(1), json!(3)]);
    }

    /// Idempotency: a key is remembered for `idempotency_window_secs` only, whatever keys the
    /// peer sent since; after it, the same send is delivered again, and remembered again.
    every async fn a_key_is_forgotten_after_the_window(deployment) {
        let store = deployment.open(|config| config.idempotency_window_secs = 1).await;
        let room = room("window");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let carol = join(&*store, &room).await;
        let once = key("short-lived");
        let batch = [message(Some(bob.id), "n", json!(1))];
        send_keyed(&*store, &room, &alice, &batch, &once).await.expect("accepted");
        let remembered = Instant::now();
        // Retried until the store forgets the key: the first retry it does not replay is sent.
        // Between retries, sends under new keys (to carol) keep alice's other keys alive.
        let deadline = remembered + EVENT_DEADLINE + Duration::from_secs(1);
        for attempt in 0.. {
            let sent = send_keyed(&*store, &room, &alice, &batch, &once).await.expect("accepted");
            if !sent.replayed {
                break;
            }
            let other = [message(Some(carol.id), "n", json!(attempt))];
            send_keyed(&*store, &room, &alice, &other, &key(&format!("other-{attempt}")))
                .await
                .expect("accepted");
            assert!(Instant::now() < deadline, "the key is never forgotten");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(remembered.elapsed() >= Duration::from_millis(900), "remembered for the window");
        assert_eq!(data_read(&*store, &room, &bob).await, [json!(1), json!(1)]);
        let other = [message(Some(bob.id), "n", json!(2))];
        let refused = send_keyed(&*store, &room, &alice, &other, &once).await;
        assert_eq!(refused.err(), Some(Error::IdempotencyKeyReused), "remembered again");
    }

    /// Idempotency is per sending peer: another peer's send under the same key is its own, and
    /// a peer that leaves forgets its keys (a peer that joins again under its id starts anew).
    every async fn keys_belong_to_their_peer_and_go_with_it(deployment) {
        let store = deployment.open(|_| {}).await;
        let room = room("per-peer-keys");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let carol = join(&*store, &room).await;
        let same = key("1");
        send_keyed(&*store, &room, &alice, &[message(Some(bob.id), "n", json!("alice"))], &same)
            .await
            .expect("accepted");
        let carols = send_keyed(&*store, &room, &carol, &[message(Some(bob.id), "n", json!("carol"))], &same)
            .await
            .expect("carol's own key");
        assert!(!carols.replayed);
        assert_eq!(data_read(&*store, &room, &bob).await, [json!("alice"), json!("carol")]);

        store.leave(&room, alice.id, alice.token()).await.unwrap();
        let again = join_as(&*store, &room, Some(alice.id), Some(address(HOME))).await.unwrap();
        let anew = send_keyed(&*store, &room, &again, &[message(Some(bob.id), "n", json!("again"))], &same)
            .await
            .expect("the key went with the peer that left");
        assert!(!anew.replayed);
        assert_eq!(data_read(&*store, &room, &bob).await.len(), 3);
    }

    /// Idempotency: a peer remembers at most `idempotency_keys_per_peer` keys; past it the
    /// oldest is forgotten (its retry is sent again) and the newest are kept.
    every async fn keys_per_peer_are_capped_oldest_first(deployment) {
        let store = deployment.open(|config| config.idempotency_keys_per_peer = 2).await;
        let room = room("key-cap");
        let alice = join(&*store, &room).await;
        let bob = join(&*store, &room).await;
        let batch = |n: u32| [message(Some(bob.id), "n", json!(n))];
        for n in 1..=3 {
            send_keyed(&*store, &room, &alice, &batch(n), &key(&format!("k{n}"))).await.unwrap();
        }
        let newest = send_keyed(&*store, &room, &alice, &batch(3), &key("k3")).await.unwrap();
        assert!(newest.replayed, "the newest is kept");
        let second = send_keyed(&*store, &room, &alice, &batch(2), &key("k2")).await.unwrap();
        assert!(second.replayed, "as is the one before");
        let oldest = send_keyed(&*store, &room, &alice, &batch(1), &key("k1")).await.unwrap();
        assert!(!oldest.replayed, "the oldest was forgotten");
        assert_eq!(data_read(&*store, &room, &bob).await, [json!(1), json!(2), json!(3), json!(1)]);
        // Remembering k1 again forgot k2, now the oldest.
        let forgotten = send_keyed(&*store, &room, &alice, &batch(9), &key("k2")).await.unwrap();
        assert!(!forgotten.replayed);
    }

    /// Several instances: a message sent through one instance is read through another, with
    /// the same ids, and ids stay gapless whichever instance accepts each message; both see the
    /// same rooms and counts (docs/API.md, Several instances).
    shared async fn instances_share_mailboxes_and_ids(deployment) {
        let one = deployment.open(|_| {}).await;
        let two = deployment.open(|_| {}).await;
        let room = room("shared");
        let alice = join(&*one, &room).await;
        let bob = join(&*two, &room).await; // Alice: 1
        for n in 0..6 {
            let through = if n % 2 == 0 { &one } else { &two };
            send(&**through, &room, &bob, vec![message(Some(alice.id), "n", json!(n))]).await;
        }
        let on_one = read_after(&*one, &room, &alice, 0).await;
        let on_two = read_after(&*two, &room, &alice, 0).await;
        assert_eq!(ids(&on_one), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ids(&on_two), ids(&on_one));
        let data: Vec<Value> = on_two[1..].iter().map(|got| got.data.clone()).collect();
        assert_eq!(data, (0..6).map(|n| json!(n)).collect::<Vec<_>>());
        assert_eq!(one.counts().await.unwrap(), (1, 2));
        assert_eq!(two.counts().await.unwrap(), (1, 2));
        assert_eq!(two.identify(&room, alice.token()).await, Ok(alice.id));
    }

    /// Several instances: a send retried under its key through another instance is answered
    /// from the first's (docs/API.md, Several instances): the key is the deployment's.
    shared async fn a_retry_through_another_instance_is_replayed(deployment) {
        let one = deployment.open(|_| {}).await;
        let two = deployment.open(|_| {}).await;
        let room = room("idempotent-shared");
        let alice = join(&*one, &room).await;
        let bob = join(&*two, &room).await;
        let batch = [message(Some(bob.id), "n", json!(1))];
        let once = key("across");
        assert!(!send_keyed(&*one, &room, &alice, &batch, &once).await.unwrap().replayed);
        assert!(send_keyed(&*two, &room, &alice, &batch, &once).await.unwrap().replayed);
        assert_eq!(data_read(&*one, &room, &bob).await, [json!(1)]);
    }

    /// Several instances: a wake-up crosses instances (a reader subscribed on one is woken by a
    /// send through the other), and a newer stream, or poll, on one replaces the one on the
    /// other, waking it (docs/API.md, Several instances).
    shared async fn wakeups_and_tickets_cross_instances(deployment) {
        let one = deployment.open(|_| {}).await;
        let two = deployment.open(|_| {}).await;
        let room = room("crossing");
        let alice = join(&*one, &room).await;
        let bob = join(&*two, &room).await;
        let reader = one.reader(&room, alice.id, alice.token()).await.unwrap();
        let mut wake = reader.subscribe().await.unwrap();
        let (ticket, _) = reader.open_stream(Some(1)).await.unwrap();
        let stream = Ticket::Stream(ticket);
        wake.mark_seen();
        let (_, got, _) = batch(reader.read(1, Some(stream), usize::MAX).await.unwrap());
        assert_eq!(ids(&got), Vec::<u64>::new());

        send(&*two, &room, &bob, vec![message(Some(alice.id), "n", json!(1))]).await;
        tokio::time::timeout(EVENT_DEADLINE, wake.changed()).await.expect("woken").expect("open");
        let (_, got, _) = batch(reader.read(1, Some(stream), usize::MAX).await.unwrap());
        assert_eq!(ids(&got), [2]);

        let elsewhere = two.reader(&room, alice.id, alice.token()).await.unwrap();
        wake.mark_seen();
        elsewhere.open_stream(Some(2)).await.unwrap();
        tokio::time::timeout(EVENT_DEADLINE, wake.changed()).await.expect("woken").expect("open");
        let replaced = reader.read(2, Some(stream), usize::MAX).await;
        assert!(matches!(replaced, Ok(Read::Replaced)));

        let (poll, _) = reader.open_poll(2).await.unwrap();
        wake.mark_seen();
        let (newer, _) = elsewhere.open_poll(2).await.unwrap();
        tokio::time::timeout(EVENT_DEADLINE, wake.changed()).await.expect("woken").expect("open");
        let replaced = reader.read(2, Some(Ticket::Poll(poll)), usize::MAX).await;
        assert!(matches!(replaced, Ok(Read::Replaced)));
        let newest = elsewhere.read(2, Some(Ticket::Poll(newer)), usize::MAX).await;
        assert!(matches!(newest, Ok(Read::Batch(_))));
    }

    /// Several instances: the limits hold across instances: a join through either counts
    /// toward `max_peers_per_room` and `max_peers_per_client`, a refused join changes the
    /// counts of neither, and a peer's send rate is one bucket (docs/API.md, Several instances).
    shared async fn limits_hold_across_instances(deployment) {
        let settings = |config: &mut Config| {
            config.max_peers_per_room = 2;
            config.max_peers_per_client = 3;
            config.send_burst = 3.0;
            config.send_rate_per_sec = 0.01;
        };
        let one = deployment.open(settings).await;
        let two = deployment.open(settings).await;
        let room = room("limited");
        let alice = join(&*one, &room).await;
        let bob = join(&*two, &room).await;
        let refused = join_as(&*one, &room, None, Some(address(HOME))).await;
        assert_eq!(refused.err(), Some(Error::RoomFull { limit: 2 }));
        assert_eq!(one.counts().await.unwrap(), (1, 2));
        assert_eq!(two.counts().await.unwrap(), (1, 2));

        join(&*two, &self::room("other")).await; // the address's third peer
        let refused = join_as(&*one, &self::room("third"), None, Some(address(HOME))).await;
        assert!(matches!(refused.err(), Some(Error::TooManyPeersForClient { limit: 3, .. })));

        // One send bucket per peer, whichever instance its sends go through.
        let hello = || vec![message(Some(bob.id), "n", json!(null))];
        send(&*one, &room, &alice, hello()).await;
        send(&*two, &room, &alice, hello()).await;
        send(&*one, &room, &alice, hello()).await;
        let refused = two.send(&room, alice.token(), &hello(), None).await;
        assert!(matches!(refused, Err(Error::RateLimited { .. })), "3 of 3 taken");
    }

    /// Several instances: a resume works on any instance: what was delivered through one is
    /// acknowledged for all, and another replays its window or resets as the first would
    /// (docs/API.md, Several instances: "a resume by `Last-Event-ID` or `after` works on any
    /// instance").
    shared async fn a_resume_works_on_any_instance(deployment) {
        let settings = |config: &mut Config| config.replay_window = 2;
        let one = deployment.open(settings).await;
        let two = deployment.open(settings).await;
        let room = room("resume-anywhere");
        let alice = join(&*one, &room).await;
        let bob = join(&*one, &room).await;
        for n in 0..4 {
            send(&*one, &room, &bob, vec![message(Some(alice.id), "n", json!(n))]).await;
        }
        let here = one.reader(&room, alice.id, alice.token()).await.unwrap();
        here.open_stream(Some(5)).await.unwrap();
        let there = two.reader(&room, alice.id, alice.token()).await.unwrap();
        let (reset, got, _) = batch(there.read(3, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (None, vec![4, 5]));
        let (reset, got, _) = batch(there.read(1, None, usize::MAX).await.unwrap());
        assert_eq!((reset, ids(&got)), (Some(ResetReason::Expired), vec![4, 5]));
    }

    /// Several instances: presence is deployment-wide: a peer listening through one instance is
    /// not swept by the other, and a silent peer is removed once in total however many
    /// instances sweep at once (docs/API.md, Several instances).
    shared async fn two_instances_sweep_a_silent_peer_once(deployment) {
        let settings = |config: &mut Config| config.peer_timeout_secs = PEER_TIMEOUT_SECS;
        let one = deployment.open(settings).await;
        let two = deployment.open(settings).await;
        let room = room("swept");
        let alice = join(&*one, &room).await;
        let alices = one.reader(&room, alice.id, alice.token()).await.unwrap();
        let _listening = alices.listen();
        let bob = join(&*two, &room).await;

        let gone = sweep_until(&[&one, &two], |gone| !gone.is_empty()).await;
        let timeout = Duration::from_secs_f64(PEER_TIMEOUT_SECS);
        let later = sweep_for(&[&one, &two], 2 * timeout).await;
        let all: Vec<_> = gone.into_iter().chain(later).collect();
        assert_eq!(all, [(room.clone(), departure(&bob, LeaveReason::Timeout))]);
        let timed_out = vec![(bob.id.to_string(), "timeout".to_owned())];
        assert_eq!(leaves(&read_after(&*two, &room, &alice, 0).await), timed_out, "one leave");
        assert_eq!(two.counts().await.unwrap(), (1, 1));
    }
}

/// A room that a join's evictions empty is gone at once, as any room whose last peer goes: not
/// listed, not counted, and not held against `max_rooms` (docs/API.md, Concepts, "Room": "it
/// disappears when its last peer leaves"; Limits, `max_rooms`). Here the announcement of the
/// third peer overflows the first's mailbox (capacity 1), whose `leave` overflows the second's,
/// whose `leave` overflows the joiner's own.
///
/// Found by this suite: the Redis store's join, unlike its leave, send and sweep, did not release
/// a room it emptied, which stayed counted (and held against `max_rooms`) until a sweep.
async fn a_room_emptied_by_a_join_is_gone(deployment: common::stores::Deployment) {
    let store = deployment
        .open(|config| {
            config.mailbox_capacity = 1;
            config.max_rooms = 1;
        })
        .await;
    let room = room("emptied");
    let alice = join(&*store, &room).await;
    let bob = join(&*store, &room).await; // Alice: 1 (full)
    let (carol, outcome) = join_outcome(&*store, &room, None, Some(address(HOME)))
        .await
        .unwrap();
    let evicted = [&alice, &bob, &carol].map(|peer| departure(peer, LeaveReason::Evicted));
    assert_eq!(outcome.departures, evicted);
    assert!(store.room(&room).await.unwrap().is_none());
    assert_eq!(store.counts().await.unwrap(), (0, 0));
    join(&*store, &self::room("another")).await;
}

mod a_room_emptied_by_a_join_is_gone {
    use super::common::stores::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        let test = "a_room_emptied_by_a_join_is_gone::memory";
        if let Some(deployment) = Backend::Memory.deployment(test) {
            super::a_room_emptied_by_a_join_is_gone(deployment).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        signpost_missing = "redis",
        ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
    )]
    async fn redis() {
        let test = "a_room_emptied_by_a_join_is_gone::redis";
        if let Some(deployment) = Backend::Redis.deployment(test) {
            super::a_room_emptied_by_a_join_is_gone(deployment).await
        }
    }
}
