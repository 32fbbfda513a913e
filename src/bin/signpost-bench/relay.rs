//! Relay: peers in rooms, some of them sending, all of them receiving; delivered messages per
//! second and the latency from the start of a POST to its event parsed by the recipient.
//!
//! Each message carries a global sequence number and its POST's start time in `data`. Recipients
//! count each sequence number they receive, so that at the end every message the server accepted
//! must have been received exactly as many times as it had recipients (lost and duplicated), and
//! each recipient checks that its mailbox's ids arrive as 1, 2, 3, … (id gaps and repeats).
//!
//! Timeline: join everyone, open every receiver, then send for `warmup + duration`; only the
//! `duration` window is measured. Then wait (at most [`DRAIN`]) for what is still on its way.
//! In open loop (`--rate`), a message's time is when it was *scheduled* to be sent, so a server
//! that falls behind shows it in the latency rather than hiding it (coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;

use crate::http::{self, Connection, Envelope, Failure, Joined, PollAnswer, Stamp};
use crate::options::{Options, Relay, Transport};
use crate::report::{self, Delivery, Errors, IdCheck, Report};

/// The longest wait, after sending stops, for messages still on their way.
const DRAIN: Duration = Duration::from_secs(10);
/// How many joins or stream openings run at once during setup.
const SETUP_CONCURRENCY: usize = 64;
/// The message type the generator sends.
const KIND: &str = "bench";

struct Room {
    name: String,
    peers: Vec<Joined>,
}

/// State shared by senders and receivers.
struct Shared {
    epoch: Instant,
    /// Nanoseconds since `epoch` when measuring starts and ends; set once sending starts.
    window_from: AtomicU64,
    window_until: AtomicU64,
    /// Recipients of each message: 1 when targeted, the room's other peers when broadcast.
    recipients: u8,
    /// The next sequence number; messages are numbered from 0.
    next_seq: AtomicU64,
    /// Per sequence number: whether the server accepted it, and how often it was received.
    accepted: Vec<AtomicBool>,
    received: Vec<AtomicU8>,
    accepted_messages: AtomicU64,
    accepted_in_window: AtomicU64,
    posts_in_window: AtomicU64,
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    delivery: Delivery,
    errors: Errors,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn window(&self) -> (u64, u64) {
        (
            self.window_from.load(Ordering::Relaxed),
            self.window_until.load(Ordering::Relaxed),
        )
    }

    fn in_window(&self, nanos: u64) -> bool {
        let (from, until) = self.window();
        from <= nanos && nanos < until
    }

    /// Accounts for one envelope a recipient parsed.
    fn receive(&self, envelope: &Envelope<'_>, ids: &mut IdCheck, latency: &mut Histogram<u64>) {
        ids.see(envelope.id, &self.delivery);
        if envelope.kind != KIND {
            return; // a `join` from setup
        }
        let now = self.now();
        let Some(stamp) = envelope
            .data
            .and_then(|data| serde_json::from_str::<Stamp>(data.get()).ok())
        else {
            let detail = format!("a bench message without its stamp: id {}", envelope.id);
            self.errors.record(&Failure::Invalid(detail));
            return;
        };
        let Some(count) = self.received.get(stamp.seq as usize) else {
            let detail = format!("a bench message this run never sent: seq {}", stamp.seq);
            self.errors.record(&Failure::Invalid(detail));
            return;
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let (from, until) = self.window();
        if from <= now && now < until {
            self.delivered_in_window.fetch_add(1, Ordering::Relaxed);
        }
        if stamp.t >= from && stamp.t < until {
            let _ = latency.record((now.saturating_sub(stamp.t) / 1000).max(1));
        }
    }

    fn expected_deliveries(&self) -> u64 {
        self.accepted_messages.load(Ordering::Relaxed) * u64::from(self.recipients)
    }

    /// Compares what was accepted with what was received, message by message.
    fn settle(&self) {
        let sent = (self.next_seq.load(Ordering::Relaxed) as usize).min(self.accepted.len());
        let expected = u64::from(self.recipients);
        let (mut lost, mut duplicated) = (0, 0);
        for seq in 0..sent {
            let received = u64::from(self.received[seq].load(Ordering::Relaxed));
            if self.accepted[seq].load(Ordering::Relaxed) {
                lost += expected.saturating_sub(received);
                duplicated += received.saturating_sub(expected);
            } else {
                duplicated += received;
            }
        }
        self.delivery.lost.fetch_add(lost, Ordering::Relaxed);
        self.delivery
            .duplicated
            .fetch_add(duplicated, Ordering::Relaxed);
    }
}

pub async fn run(options: &Options, relay: Relay) -> Result<Report, String> {
    let server = options.server;
    let receive_server = options.receive_server;
    let run_id = report::run_id();
    let recipients = if relay.broadcast { relay.peers - 1 } else { 1 };
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        window_from: AtomicU64::new(u64::MAX),
        window_until: AtomicU64::new(u64::MAX),
        recipients: u8::try_from(recipients).map_err(|_| "at most 256 peers per room")?,
        next_seq: AtomicU64::new(0),
        accepted: (0..relay.max_messages)
            .map(|_| AtomicBool::new(false))
            .collect(),
        received: (0..relay.max_messages).map(|_| AtomicU8::new(0)).collect(),
        accepted_messages: AtomicU64::new(0),
        accepted_in_window: AtomicU64::new(0),
        posts_in_window: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
        delivery: Delivery::default(),
        errors: Errors::default(),
    });

    eprintln!("joining {} rooms × {} peers …", relay.rooms, relay.peers);
    let rooms: Vec<Room> = stream::iter(0..relay.rooms)
        .map(|index| {
            let name = format!("bench-{run_id}-{index}");
            async move {
                let mut connection = Connection::new(server);
                let mut peers = Vec::with_capacity(relay.peers);
                for _ in 0..relay.peers {
                    peers.push(http::join(&mut connection, &name).await?);
                }
                Ok::<_, Failure>(Room { name, peers })
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|failure| format!("joining failed: {}", failure.detail()))?;
    let rooms = Arc::new(rooms);

    eprintln!(
        "opening {} receivers ({:?}) …",
        relay.rooms * relay.peers,
        relay.transport
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = http::stream_client();
    let everyone: Vec<(usize, usize)> = (0..relay.rooms)
        .flat_map(|room| (0..relay.peers).map(move |peer| (room, peer)))
        .collect();
    let receivers: Vec<tokio::task::JoinHandle<Histogram<u64>>> = stream::iter(everyone)
        .map(|(room, peer)| {
            let (rooms, shared, client, stop) = (
                Arc::clone(&rooms),
                Arc::clone(&shared),
                client.clone(),
                stop_rx.clone(),
            );
            async move {
                match relay.transport {
                    Transport::Sse => {
                        let (room, peer) = (&rooms[room].name, &rooms[room].peers[peer]);
                        let mut events = http::events(&client, receive_server, room, peer).await?;
                        match events.next().await {
                            Some(Ok(event)) if event.event == "ready" => {}
                            other => {
                                return Err(Failure::Status(
                                    0,
                                    format!("no ready event: {other:?}"),
                                ))
                            }
                        }
                        Ok(tokio::spawn(receive_sse(events, shared, stop)))
                    }
                    Transport::Poll => Ok(tokio::spawn(receive_poll(
                        receive_server,
                        rooms,
                        room,
                        peer,
                        shared,
                        stop,
                    ))),
                }
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|failure: Failure| format!("opening a receiver failed: {}", failure.detail()))?;

    let start = shared.now();
    let from = start + relay.warmup.as_nanos() as u64;
    let until = from + relay.duration.as_nanos() as u64;
    shared.window_until.store(until, Ordering::Relaxed);
    shared.window_from.store(from, Ordering::Relaxed);
    eprintln!(
        "sending for {:.1} s ({:.1} s warmup) …",
        (until - start) as f64 / 1e9,
        relay.warmup.as_secs_f64()
    );
    let progress = {
        let shared = Arc::clone(&shared);
        let previous = AtomicU64::new(0);
        report::progress(move || {
            let delivered = shared.delivered.load(Ordering::Relaxed);
            let last = previous.swap(delivered, Ordering::Relaxed);
            format!(
                "accepted {} delivered {} ({}/s) errors {}",
                shared.accepted_messages.load(Ordering::Relaxed),
                delivered,
                report::format_number((delivered - last) as f64),
                shared.errors.total()
            )
        })
    };

    let loops = relay.senders * relay.in_flight;
    let senders: Vec<_> = (0..loops)
        .map(|index| {
            let sender = index % relay.senders;
            let (room, peer) = (sender % relay.rooms, (sender / relay.rooms) % relay.peers);
            tokio::spawn(send_loop(
                server,
                Arc::clone(&rooms),
                room,
                peer,
                index,
                loops,
                relay.clone(),
                Arc::clone(&shared),
                until,
            ))
        })
        .collect();
    for sender in senders {
        sender.await.map_err(|error| error.to_string())?;
    }

    let drain_start = Instant::now();
    while shared.delivered.load(Ordering::Relaxed) < shared.expected_deliveries()
        && drain_start.elapsed() < DRAIN
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.abort();
    let _ = stop_tx.send(true);
    let mut latency = report::latency_histogram();
    for receiver in receivers {
        let histogram = receiver.await.map_err(|error| error.to_string())?;
        latency.add(histogram).map_err(|error| error.to_string())?;
    }
    shared.settle();

    let seconds = relay.duration.as_secs_f64();
    let settings = json!({
        "transport": match relay.transport { Transport::Sse => "sse", Transport::Poll => "poll" },
        "target": if relay.broadcast { "broadcast" } else { "targeted" },
        "rooms": relay.rooms,
        "peers": relay.peers,
        "senders": relay.senders,
        "in_flight": relay.in_flight,
        "batch": relay.batch,
        "size": relay.size,
        "rate": relay.rate,
        "warmup_s": relay.warmup.as_secs_f64(),
        "duration_s": seconds,
        "threads": options.threads,
    });
    let mut report = Report::new("relay", settings, &shared.delivery, &shared.errors);
    let per_second = |count: &AtomicU64| (count.load(Ordering::Relaxed) as f64 / seconds).round();
    report.figure(
        "delivered_per_s",
        per_second(&shared.delivered_in_window),
        "msgs/s",
    );
    report.figure(
        "accepted_per_s",
        per_second(&shared.accepted_in_window),
        "msgs/s",
    );
    report.figure("posts_per_s", per_second(&shared.posts_in_window), "req/s");
    report.figure(
        "accepted_total",
        shared.accepted_messages.load(Ordering::Relaxed),
        "msgs",
    );
    report.figure(
        "delivered_total",
        shared.delivered.load(Ordering::Relaxed),
        "msgs",
    );
    report.latency(latency);
    Ok(report)
}

/// One POST loop of one sender: `batch` messages per POST, one POST at a time.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    server: std::net::SocketAddr,
    rooms: Arc<Vec<Room>>,
    room: usize,
    peer: usize,
    index: usize,
    loops: usize,
    relay: Relay,
    shared: Arc<Shared>,
    until: u64,
) {
    let room = &rooms[room];
    let me = &room.peers[peer];
    let others: Vec<&str> = room
        .peers
        .iter()
        .filter(|other| other.peer_id != me.peer_id)
        .map(|other| other.peer_id.as_str())
        .collect();
    let path = format!("/api/rooms/{}/messages", room.name);
    let pad = "x".repeat(relay.size.saturating_sub(40));
    let mut connection = Connection::new(server);
    let (mut body, mut request) = (Vec::new(), Vec::new());
    let mut next_target = index;
    // Open loop: this loop's share of the rate, its first send staggered among the loops.
    let interval = relay
        .rate
        .map(|rate| Duration::from_secs_f64(loops as f64 * relay.batch as f64 / rate));
    let first = shared.now()
        + interval.map_or(0, |interval| {
            (interval.as_nanos() as u64) * index as u64 / loops as u64
        });
    let mut posts: u64 = 0;

    loop {
        let t = match interval {
            Some(interval) => {
                let scheduled = first + posts * interval.as_nanos() as u64;
                let now = shared.now();
                if scheduled > now {
                    tokio::time::sleep(Duration::from_nanos(scheduled - now)).await;
                }
                scheduled
            }
            None => shared.now(),
        };
        if t >= until {
            break;
        }
        posts += 1;
        let seq = shared
            .next_seq
            .fetch_add(relay.batch as u64, Ordering::Relaxed);
        if seq + relay.batch as u64 > shared.accepted.len() as u64 {
            break; // --max-messages reached
        }

        body.clear();
        if relay.batch > 1 {
            body.push(b'[');
        }
        for n in 0..relay.batch as u64 {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"type\":\"bench\",");
            if !relay.broadcast {
                body.extend_from_slice(b"\"to\":\"");
                body.extend_from_slice(others[next_target % others.len()].as_bytes());
                body.extend_from_slice(b"\",");
                next_target += 1;
            }
            body.extend_from_slice(b"\"data\":{\"seq\":");
            body.extend_from_slice(itoa::Buffer::new().format(seq + n).as_bytes());
            body.extend_from_slice(b",\"t\":");
            body.extend_from_slice(itoa::Buffer::new().format(t).as_bytes());
            body.extend_from_slice(b",\"pad\":\"");
            body.extend_from_slice(pad.as_bytes());
            body.extend_from_slice(b"\"}}");
        }
        if relay.batch > 1 {
            body.push(b']');
        }
        connection.head(&mut request, "POST", &path, Some(&me.token), body.len());
        request.extend_from_slice(&body);

        let outcome = match connection.request(&request).await {
            Ok(answer) if answer.status == 202 => Ok(()),
            Ok(answer) => Err(Failure::Status(
                answer.status,
                String::from_utf8_lossy(answer.body).into_owned(),
            )),
            Err(error) => Err(Failure::Connection(error)),
        };
        match outcome {
            Ok(()) => {
                for n in 0..relay.batch as u64 {
                    shared.accepted[(seq + n) as usize].store(true, Ordering::Relaxed);
                }
                shared
                    .accepted_messages
                    .fetch_add(relay.batch as u64, Ordering::Relaxed);
                if shared.in_window(t) {
                    shared
                        .accepted_in_window
                        .fetch_add(relay.batch as u64, Ordering::Relaxed);
                    shared.posts_in_window.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(failure) => {
                shared.errors.record(&failure);
                // Do not spin on a server that refuses everything.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Receives on an SSE stream until told to stop.
async fn receive_sse(
    mut events: http::Events,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut latency = report::latency_histogram();
    let mut ids = IdCheck::default();
    loop {
        let Some(event) = crate::unless_stopped(&mut stop, events.next()).await else {
            break;
        };
        match event {
            Some(Ok(event)) if event.event == "reset" => {
                shared.delivery.resets.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(event)) if event.data.is_empty() => {}
            Some(Ok(event)) => match serde_json::from_str::<Envelope<'_>>(&event.data) {
                Ok(envelope) => shared.receive(&envelope, &mut ids, &mut latency),
                Err(error) => shared
                    .errors
                    .record(&Failure::Invalid(format!("unparsable event: {error}"))),
            },
            Some(Err(error)) => {
                shared
                    .errors
                    .record(&Failure::Connection(http::ConnectionError(
                        error.to_string(),
                    )));
                break;
            }
            None => {
                shared
                    .errors
                    .record(&Failure::Connection(http::ConnectionError(
                        "an SSE stream ended".into(),
                    )));
                break;
            }
        }
    }
    latency
}

/// Receives by long-polling until told to stop.
async fn receive_poll(
    server: std::net::SocketAddr,
    rooms: Arc<Vec<Room>>,
    room: usize,
    peer: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let room = &rooms[room];
    let me = &room.peers[peer];
    let base = format!(
        "/api/rooms/{}/peers/{}/messages?wait=5&after=",
        room.name, me.peer_id
    );
    let mut latency = report::latency_histogram();
    let mut ids = IdCheck::default();
    let mut connection = Connection::new(server);
    let mut request = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("{base}{after}");
        connection.head(&mut request, "GET", &path, Some(&me.token), 0);
        let Some(answer) = crate::unless_stopped(&mut stop, connection.request(&request)).await
        else {
            break;
        };
        match answer {
            Ok(answer) if answer.status == 200 => {
                match serde_json::from_slice::<PollAnswer<'_>>(answer.body) {
                    Ok(batch) => {
                        if batch.reset {
                            shared.delivery.resets.fetch_add(1, Ordering::Relaxed);
                        }
                        for envelope in &batch.messages {
                            shared.receive(envelope, &mut ids, &mut latency);
                        }
                        after = batch.last_id;
                    }
                    Err(error) => shared
                        .errors
                        .record(&Failure::Invalid(format!("unparsable poll: {error}"))),
                }
            }
            Ok(answer) => {
                let failure = Failure::Status(
                    answer.status,
                    String::from_utf8_lossy(answer.body).into_owned(),
                );
                shared.errors.record(&failure);
                break;
            }
            Err(error) => {
                shared.errors.record(&Failure::Connection(error));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    latency
}
