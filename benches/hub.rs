//! The relay hot path without HTTP: a send through the hub into the recipients' mailboxes, and
//! the read and acknowledgement a stream then does. A regression in the core shows up here
//! without the noise of sockets and the runtime. `cargo bench --bench hub`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::value::RawValue;
use signpost::config::Config;
use signpost::held_bytes::HeldBytes;
use signpost::hub::{Hub, Joined};
use signpost::identity::{PeerId, RoomName};
use signpost::mailbox::{Mailbox, MailboxLimits, Read};
use signpost::message::{EncodedMessage, OutgoingMessage};
use signpost::store::Reader;

/// The memory store's operations never wait: their futures are ready at the first poll, so the
/// benchmark measures them without a runtime.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the memory store never waits"),
    }
}

/// The reader of a joined peer's mailbox, as a stream holds it: through the store's trait, so
/// that each read pays what the server's does (a boxed future and a dynamic call).
fn reader_of(hub: &Hub, room: &RoomName, peer: &Joined) -> Box<dyn Reader> {
    now(hub.reader(room, peer.peer_id, Some(peer.token.reveal()))).unwrap()
}

/// A hub with no rate limit, as in the `bench` profile of `Rocket.toml`.
fn hub() -> Hub {
    Hub::new(&Config {
        send_rate_per_sec: 1e12,
        send_burst: 1e12,
        log_level: signpost::config::LogLevel::Off,
        ..Config::default()
    })
}

fn filled_room(hub: &Hub, name: &str, peers: usize) -> (RoomName, Vec<Joined>) {
    let room = RoomName::parse(name).unwrap();
    let joined = (0..peers)
        .map(|_| now(hub.join(&room, None, None, None)).unwrap())
        .collect();
    (room, joined)
}

/// About `size` bytes of a message's data.
fn data(size: usize) -> Box<RawValue> {
    RawValue::from_string(format!(r#"{{"seq":1,"pad":"{}"}}"#, "x".repeat(size))).unwrap()
}

/// A message with `data`, as a client would send it.
fn message(to: Option<PeerId>, data: &RawValue) -> OutgoingMessage<'_> {
    OutgoingMessage {
        kind: "offer".into(),
        to,
        data: Some(data),
    }
}

/// What a stream does after a wake-up: read what is new, render it, acknowledge it.
fn drain_reader(reader: &dyn Reader, cursor: &mut u64) -> usize {
    let Ok(Read::Batch(batch)) = now(reader.read(*cursor, None, 256 * 1024)) else {
        unreachable!("the peer is in the room")
    };
    let mut bytes = 0;
    for entry in &batch.entries {
        bytes += black_box(entry.message.render(entry.id)).len();
        *cursor = entry.id;
    }
    reader.acknowledge(*cursor);
    bytes
}

/// [`drain_reader`] on a mailbox itself, with no store around it.
fn drain(mailbox: &Mailbox, cursor: &mut u64) -> usize {
    let Read::Batch(batch) = mailbox.read_after(*cursor, None, 256 * 1024) else {
        unreachable!("the peer is in the room")
    };
    let mut bytes = 0;
    for entry in &batch.entries {
        bytes += black_box(entry.message.render(entry.id)).len();
        *cursor = entry.id;
    }
    mailbox.acknowledge(*cursor);
    bytes
}

fn send_and_receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(1));
    let data = data(100);

    let hub = hub();
    let (room, peers) = filled_room(&hub, "targeted", 2);
    let (sender, recipient) = (&peers[0], &peers[1]);
    let reader = reader_of(&hub, &room, recipient);
    let mut cursor = 0;
    group.bench_function("targeted send + read, 100 B", |b| {
        b.iter_batched(
            || vec![message(Some(recipient.peer_id), &data)],
            |batch| {
                now(hub.send(&room, Some(sender.token.reveal()), batch, None)).unwrap();
                drain_reader(&*reader, &mut cursor)
            },
            BatchSize::SmallInput,
        )
    });

    group.throughput(Throughput::Elements(16));
    group.bench_function("batch of 16 send + read, 100 B", |b| {
        b.iter_batched(
            || {
                (0..16)
                    .map(|_| message(Some(recipient.peer_id), &data))
                    .collect()
            },
            |batch| {
                now(hub.send(&room, Some(sender.token.reveal()), batch, None)).unwrap();
                drain_reader(&*reader, &mut cursor)
            },
            BatchSize::SmallInput,
        )
    });

    let (room, peers) = filled_room(&hub, "broadcast", 8);
    let readers: Vec<Box<dyn Reader>> = peers[1..]
        .iter()
        .map(|peer| reader_of(&hub, &room, peer))
        .collect();
    let mut cursors = vec![0; readers.len()];
    group.throughput(Throughput::Elements(7));
    group.bench_function("broadcast to 7 + 7 reads, 100 B", |b| {
        b.iter_batched(
            || vec![message(None, &data)],
            |batch| {
                now(hub.send(&room, Some(peers[0].token.reveal()), batch, None)).unwrap();
                for (reader, cursor) in readers.iter().zip(&mut cursors) {
                    drain_reader(&**reader, cursor);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn mailbox_alone(c: &mut Criterion) {
    let mut group = c.benchmark_group("mailbox");
    group.throughput(Throughput::Elements(1));
    // The default limits; the ledger is what a store's mailboxes share (the store charges a
    // send before pushing it; here the trims release what nothing charged, which it allows).
    let defaults = Config::default();
    let limits = MailboxLimits {
        capacity: defaults.mailbox_capacity,
        max_bytes: defaults.mailbox_max_bytes,
        replay_window: defaults.replay_window,
        replay_window_bytes: defaults.replay_window_bytes,
    };
    let held = Arc::new(HeldBytes::new(
        defaults.client_max_held_bytes,
        defaults.max_held_bytes,
    ));
    let mailbox = Mailbox::new(limits, held);
    let message = EncodedMessage::from_server("join", &serde_json::json!({"peer_id": "x"}));
    let mut cursor = 0;
    group.bench_function("push + read + acknowledge", |b| {
        b.iter(|| {
            mailbox.push(Arc::clone(&message), None);
            drain(&mailbox, &mut cursor)
        })
    });
    group.finish();
}

criterion_group!(benches, send_and_receive, mailbox_alone);
criterion_main!(benches);
