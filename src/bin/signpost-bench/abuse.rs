//! Abuse: one attack shape, from one or more client addresses at their full default allowances,
//! against a server on its default profile (not `bench`: the limits that protect a public
//! server are the point). While it runs, the server's resident memory and open descriptors are
//! sampled (`--server-pid`), and a fresh client on an address of its own (127.0.1.1) does round
//! trips (join two peers, send one to the other, poll it, leave): their latency, and how many
//! failed, say whether the attack locks others out.
//!
//! The attacking addresses are 127.0.0.2, 127.0.0.3, …: each client socket is bound to one before
//! it connects, so the server counts each as a client of its own. Answers such as 408, 429 or
//! 503 and connections the server closes are outcomes, counted; none of them ends the run. A
//! shape stops by itself after `--duration` once set up, and at once if the server's RSS passes
//! `--rss-cap-mib` (reported as "> N MiB"), so that a server without limits cannot take the
//! machine down.
//!
//! - `memory`: per address, `--peers` peers in rooms of two; A sends B 63 KiB messages at the
//!   allowed rate (50/s, burst 400); B keeps present with quick polls (`wait=0`) that
//!   acknowledge nothing (`after=0`) and whose answers are not read past their head; once set
//!   up, 50 long-polls (`after=0`) and 10 SSE streams on B peers whose answers are never read.
//! - `connections`: per address, `--connections` connections that trickle a join body
//!   (`Content-Length: 100`, one byte every 5 s); how many are still open every 10 s.
//! - `rooms`: per address, one peer in each of as many rooms as the server allows (up to
//!   `--peers`), kept present by polls; how many addresses it takes to exhaust `max_rooms`.
//! - `listing`: an invite-only room (`join_auth = "required"`; `--join-token` puts a peer in
//!   it) and its peer, asked for without a credential: the statuses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::http::{self, Connection, ConnectionError, Failure, Joined};
use crate::options::{Abuse, Options, Shape};
use crate::report::{self, Delivery, Errors, Report};

/// The `data` of one memory-shape message: 63 KiB, so that its envelope stays under the default
/// `max_message_bytes` (64 KiB).
const MESSAGE_DATA_BYTES: usize = 63 * 1024;
/// The default `send_rate_per_sec` and `send_burst`: what one peer may send.
const SEND_RATE_PER_SEC: f64 = 50.0;
const SEND_BURST: f64 = 400.0;
/// Keep-alive connections per address that carry the memory shape's sends.
const SENDER_CONNECTIONS: usize = 16;
/// How often an attacking peer polls to stay present: well inside the default
/// `peer_timeout_secs` (30 s), rarely enough that the polls are not the attack.
const PRESENCE_EVERY: Duration = Duration::from_secs(15);
/// Presence polls in flight per address.
const PRESENCE_CONCURRENCY: usize = 32;
/// Long-polls and SSE streams per address whose answers are never read (memory shape).
const UNREAD_POLLS: usize = 50;
const UNREAD_STREAMS: usize = 10;
/// The trickled join body: its announced length, and the pause between its bytes.
const TRICKLE_LENGTH: usize = 100;
const TRICKLE_EVERY: Duration = Duration::from_secs(5);
/// The longest wait for a trickling connection to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the trickling connections are counted.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// The longest a shape may take to set up (1,000 joins at 20/s take about 45 s).
const SETUP_LIMIT: Duration = Duration::from_secs(120);
/// The fresh client's round trips: one every this long, each given up after the timeout.
const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server's RSS and descriptors are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The `index`-th attacking address: 127.0.0.2 onwards.
fn attacker(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 2)) + index as u32,
    ))
}

/// The fresh client's address, apart from every attacker's.
fn probe_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1))
}

/// What every task of a shape shares.
struct Attack {
    server: SocketAddr,
    abuse: Abuse,
    run_id: String,
    stop: watch::Receiver<bool>,
    errors: Arc<Errors>,
    /// Joins refused with `too_many_joins` and tried again: the join rate at work, not errors.
    join_retries: AtomicU64,
}

impl Attack {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `duration`; false if the run was told to stop meanwhile.
    async fn sleep(&self, duration: Duration) -> bool {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return false;
        }
        crate::unless_stopped(&mut stop, tokio::time::sleep(duration))
            .await
            .is_some()
    }

    /// Holds the attack for `--duration`, or until stopped.
    async fn hold(&self) {
        eprintln!("holding the attack for {:?} …", self.abuse.duration);
        self.sleep(self.abuse.duration).await;
    }
}

/// The server's memory and descriptors, sampled while a shape runs.
#[derive(Default)]
struct Samples {
    rss_start_kib: Option<u64>,
    rss_peak_kib: u64,
    fds_start: Option<u64>,
    fds_peak: u64,
    over_cap: bool,
}

fn server_fds(pid: Option<u32>) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{}/fd", pid?)).ok()?;
    Some(entries.count() as u64)
}

/// The server's limit on open files (soft), from `/proc/<pid>/limits`.
fn server_open_files_limit(pid: Option<u32>) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pid?)).ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Samples the server until the run stops; tells the run to stop if its RSS passes the cap.
fn sample(
    pid: Option<u32>,
    cap_kib: u64,
    samples: Arc<Mutex<Samples>>,
    stop_tx: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    {
        let mut first = samples.lock();
        first.rss_start_kib = report::server_rss_kib(pid);
        first.fds_start = server_fds(pid);
        first.rss_peak_kib = first.rss_start_kib.unwrap_or(0);
        first.fds_peak = first.fds_start.unwrap_or(0);
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        loop {
            ticks.tick().await;
            let (rss, fds) = (report::server_rss_kib(pid), server_fds(pid));
            let mut samples = samples.lock();
            if let Some(rss) = rss {
                samples.rss_peak_kib = samples.rss_peak_kib.max(rss);
                if rss > cap_kib && !samples.over_cap {
                    samples.over_cap = true;
                    eprintln!(
                        "server RSS {} MiB passed the cap of {} MiB: stopping the shape",
                        rss / 1024,
                        cap_kib / 1024
                    );
                    let _ = stop_tx.send(true);
                }
            }
            if let Some(fds) = fds {
                samples.fds_peak = samples.fds_peak.max(fds);
            }
        }
    })
}

/// The fresh client's round trips and failures.
struct Probe {
    latency: Mutex<Histogram<u64>>,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

pub async fn run(options: &Options, abuse: Abuse) -> Result<Report, String> {
    let server = options.server;
    let pid = options.server_pid;
    if pid.is_none() {
        eprintln!("no --server-pid: the server's memory and descriptors are not measured");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let attack = Arc::new(Attack {
        server,
        abuse: abuse.clone(),
        run_id: report::run_id(),
        stop: stop_rx,
        errors: Arc::new(Errors::default()),
        join_retries: AtomicU64::new(0),
    });
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sampler = sample(
        pid,
        abuse.rss_cap_mib * 1024,
        Arc::clone(&samples),
        stop_tx.clone(),
    );
    let probe = Arc::new(Probe {
        latency: Mutex::new(report::latency_histogram()),
        failed: AtomicU64::new(0),
        first_failure: Mutex::new(None),
    });
    let prober = (abuse.shape != Shape::Listing)
        .then(|| tokio::spawn(probe_loop(Arc::clone(&attack), Arc::clone(&probe))));
    let progress = {
        let (samples, probe) = (Arc::clone(&samples), Arc::clone(&probe));
        report::progress(move || {
            let rss = report::server_rss_kib(pid).unwrap_or(0);
            let fds = server_fds(pid).unwrap_or(0);
            let (samples, latency) = (samples.lock(), probe.latency.lock());
            format!(
                "server RSS {} MiB (peak {}), {fds} descriptors; fresh client p99 {:.1} ms, \
                 {} failed",
                rss / 1024,
                samples.rss_peak_kib / 1024,
                latency.value_at_quantile(0.99) as f64 / 1000.0,
                probe.failed.load(Ordering::Relaxed)
            )
        })
    };

    let started = Instant::now();
    let figures = match abuse.shape {
        Shape::Memory => memory(&attack).await,
        Shape::Connections => connections(&attack).await,
        Shape::Rooms => rooms(&attack).await,
        Shape::Listing => listing(&attack).await,
    };
    let _ = stop_tx.send(true);
    let elapsed = started.elapsed();
    if let Some(prober) = prober {
        let _ = prober.await;
    }
    progress.abort();
    sampler.abort();

    let settings = json!({
        "shape": abuse.shape.name(),
        "addresses": abuse.addresses,
        "duration_s": abuse.duration.as_secs_f64(),
        "peers_per_address": abuse.peers,
        "connections_per_address": abuse.connections,
        "rss_cap_mib": abuse.rss_cap_mib,
        "server_pid": pid,
        "server_open_files_limit": server_open_files_limit(pid),
    });
    let mut report = Report::new("abuse", settings, &Delivery::default(), &attack.errors);
    report.figure(
        "elapsed_s",
        (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "s",
    );
    let samples = samples.lock();
    if let Some(start) = samples.rss_start_kib {
        let mib = |kib: u64| (kib as f64 / 102.4).round() / 10.0;
        let grown = samples.rss_peak_kib.saturating_sub(start);
        report.figure("server_rss_start_mib", mib(start), "MiB");
        report.figure("server_rss_peak_mib", mib(samples.rss_peak_kib), "MiB");
        report.figure(
            "server_rss_peak_per_address_mib",
            mib(grown / abuse.addresses as u64),
            "MiB",
        );
        report.figure("server_rss_over_cap", samples.over_cap, "");
        if samples.over_cap {
            report.figure(
                "server_rss_peak_shown",
                format!("> {} MiB", abuse.rss_cap_mib),
                "",
            );
        }
    }
    if let Some(start) = samples.fds_start {
        report.figure("server_fds_start", start, "");
        report.figure("server_fds_peak", samples.fds_peak, "");
    }
    for (name, value, unit) in figures {
        report.figure(name, value, unit);
    }
    report.figure(
        "join_retries",
        attack.join_retries.load(Ordering::Relaxed),
        "joins refused with too_many_joins, tried again",
    );
    if abuse.shape != Shape::Listing {
        let latency = probe.latency.lock().clone();
        report.figure("probe_round_trips", latency.len(), "");
        report.figure("probe_failed", probe.failed.load(Ordering::Relaxed), "");
        if let Some(failure) = probe.first_failure.lock().clone() {
            report.figure("probe_first_failure", failure, "");
        }
        report.latency(latency);
    }
    Ok(report)
}

type Figures = Vec<(&'static str, Value, &'static str)>;

/// The fresh client: a round trip every [`PROBE_EVERY`] until the run stops.
async fn probe_loop(attack: Arc<Attack>, probe: Arc<Probe>) {
    let mut round = 0u64;
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if attack.stopped() {
            break;
        }
        round += 1;
        let room = format!("abuse-{}-probe-{round}", attack.run_id);
        let started = Instant::now();
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, round_trip(attack.server, &room)).await;
        match outcome {
            Ok(Ok(())) => {
                let micros = (started.elapsed().as_micros() as u64).max(1);
                let _ = probe.latency.lock().record(micros);
            }
            Ok(Err(failure)) => {
                probe.failed.fetch_add(1, Ordering::Relaxed);
                probe
                    .first_failure
                    .lock()
                    .get_or_insert_with(|| failure.detail());
            }
            Err(_) => {
                probe.failed.fetch_add(1, Ordering::Relaxed);
                probe
                    .first_failure
                    .lock()
                    .get_or_insert_with(|| format!("no round trip in {PROBE_TIMEOUT:?}"));
            }
        }
    }
}

/// One round trip of a fresh client on new connections: join two peers, send one to the other,
/// poll it; then leave (not timed).
async fn round_trip(server: SocketAddr, room: &str) -> Result<(), Failure> {
    let local = Some(probe_address());
    let (mut first, mut second) = (
        Connection::from_address(server, local),
        Connection::from_address(server, local),
    );
    let sender = http::join(&mut first, room).await?;
    let receiver = http::join(&mut second, room).await?;
    let body = format!(r#"{{"type":"probe","to":"{}","data":1}}"#, receiver.peer_id);
    let status = send(&mut first, room, &sender, &[body.as_bytes()]).await?;
    if status != 202 {
        return Err(Failure::Status(status, "send".into()));
    }
    let mut after = 0;
    let received = loop {
        let (status, body) = poll(&mut second, room, &receiver, after, 5.0).await?;
        if status != 200 {
            return Err(Failure::Status(status, body));
        }
        let answer: Value =
            serde_json::from_str(&body).map_err(|error| Failure::Invalid(error.to_string()))?;
        let probe = answer["messages"]
            .as_array()
            .is_some_and(|messages| messages.iter().any(|m| m["type"] == "probe"));
        if probe {
            break true;
        }
        after = answer["last_id"].as_u64().unwrap_or(after);
    };
    let _ = http::leave(&mut first, room, &sender).await;
    let _ = http::leave(&mut second, room, &receiver).await;
    received
        .then_some(())
        .ok_or_else(|| Failure::Invalid("not received".into()))
}

/// `POST /api/rooms/{room}/messages` as `peer`, the body in parts; the status.
async fn send(
    connection: &mut Connection,
    room: &str,
    peer: &Joined,
    body: &[&[u8]],
) -> Result<u16, Failure> {
    let length = body.iter().map(|part| part.len()).sum();
    let mut head = Vec::with_capacity(256);
    let path = format!("/api/rooms/{room}/messages");
    connection.head(&mut head, "POST", &path, Some(&peer.token), length);
    let mut parts = Vec::with_capacity(body.len() + 1);
    parts.push(head.as_slice());
    parts.extend_from_slice(body);
    let answer = connection
        .request_parts(&parts)
        .await
        .map_err(Failure::Connection)?;
    Ok(answer.status)
}

/// A long-poll as `peer`; the status and the body.
async fn poll(
    connection: &mut Connection,
    room: &str,
    peer: &Joined,
    after: u64,
    wait: f64,
) -> Result<(u16, String), Failure> {
    let mut head = Vec::with_capacity(256);
    let path = format!(
        "/api/rooms/{room}/peers/{}/messages?after={after}&wait={wait}",
        peer.peer_id
    );
    connection.head(&mut head, "GET", &path, Some(&peer.token), 0);
    let answer = connection
        .request(&head)
        .await
        .map_err(Failure::Connection)?;
    Ok((
        answer.status,
        String::from_utf8_lossy(answer.body).into_owned(),
    ))
}

/// A join as an attacker: refused for the join rate (`too_many_joins`), it waits and tries
/// again, as a patient attacker would; any other refusal is the answer.
async fn join_patiently(
    attack: &Attack,
    connection: &mut Connection,
    room: &str,
) -> Option<Result<Joined, Failure>> {
    loop {
        if attack.stopped() {
            return None;
        }
        match http::join(connection, room).await {
            Err(Failure::Status(429, body)) if body.contains("too_many_joins") => {
                attack.join_retries.fetch_add(1, Ordering::Relaxed);
                if !attack.sleep(Duration::from_millis(50)).await {
                    return None;
                }
            }
            outcome => return Some(outcome),
        }
    }
}

/// Writes a request on a connection of its own and reads nothing but (when `read_head`) the
/// first bytes of its answer; the connection is returned, to be held or dropped.
async fn unread_request(
    server: SocketAddr,
    local: IpAddr,
    request: &str,
    read_head: bool,
) -> Result<TcpStream, ConnectionError> {
    let failure = |error: std::io::Error| ConnectionError(error.to_string());
    let mut stream = http::connect(server, Some(local)).await.map_err(failure)?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(failure)?;
    if read_head {
        let mut head = [0u8; 64];
        let read = stream.read(&mut head).await.map_err(failure)?;
        if read == 0 {
            return Err(ConnectionError("closed before answering".into()));
        }
    }
    Ok(stream)
}

/// A peer the memory or rooms shape holds, and when it next polls to stay present.
struct Held {
    room: String,
    peer: Joined,
    next_presence: Instant,
}

/// Polls each held peer once every [`PRESENCE_EVERY`] so that it stays present, until stopped.
/// `unread`: the poll's answer is not read past its head (a receiver with a backlog).
async fn keep_present(
    attack: Arc<Attack>,
    local: IpAddr,
    held: Arc<Mutex<Vec<Held>>>,
    unread: bool,
) {
    let limit = Arc::new(Semaphore::new(PRESENCE_CONCURRENCY));
    let host = attack.server.to_string();
    while attack.sleep(Duration::from_millis(100)).await {
        let now = Instant::now();
        let due: Vec<(String, Joined)> = held
            .lock()
            .iter_mut()
            .filter(|held| held.next_presence <= now)
            .map(|held| {
                held.next_presence = now + PRESENCE_EVERY;
                (held.room.clone(), held.peer.clone())
            })
            .collect();
        for (room, peer) in due {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                return;
            };
            let (attack, host) = (Arc::clone(&attack), host.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let request = format!(
                    "GET /api/rooms/{room}/peers/{}/messages?after=0&wait=0 HTTP/1.1\r\n\
                     Host: {host}\r\nAuthorization: Bearer {}\r\n\r\n",
                    peer.peer_id, peer.token
                );
                let outcome = if unread {
                    unread_request(attack.server, local, &request, true)
                        .await
                        .map(drop)
                        .map_err(Failure::Connection)
                } else {
                    let mut connection = Connection::from_address(attack.server, Some(local));
                    poll(&mut connection, &room, &peer, 0, 0.0)
                        .await
                        .and_then(|(status, body)| match status {
                            200 => Ok(()),
                            status => Err(Failure::Status(status, body)),
                        })
                };
                if let Err(failure) = outcome {
                    attack.errors.record(&failure);
                }
            });
        }
    }
}

/// Per address: pairs A → B sending 63 KiB messages that B never acknowledges, and answers
/// never read.
async fn memory(attack: &Arc<Attack>) -> Figures {
    let abuse = &attack.abuse;
    let filler: Arc<[u8]> = vec![b'x'; MESSAGE_DATA_BYTES].into();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let unread_open = Arc::new(AtomicU64::new(0));
    let pairs_joined = Arc::new(AtomicU64::new(0));
    let setup_done = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let mut holders = JoinSet::new();
    eprintln!(
        "memory: {} addresses × {} peers in rooms of 2 …",
        abuse.addresses, abuse.peers
    );
    for address in 0..abuse.addresses {
        let local = attacker(address);
        let senders: Arc<Mutex<Vec<(String, Joined, Joined)>>> = Arc::default();
        let receivers: Arc<Mutex<Vec<Held>>> = Arc::default();
        let senders_present: Arc<Mutex<Vec<Held>>> = Arc::default();
        tasks.spawn(keep_present(
            Arc::clone(attack),
            local,
            Arc::clone(&receivers),
            true,
        ));
        tasks.spawn(keep_present(
            Arc::clone(attack),
            local,
            Arc::clone(&senders_present),
            false,
        ));
        for worker in 0..SENDER_CONNECTIONS {
            let (attack, senders, filler, sent, sent_bytes) = (
                Arc::clone(attack),
                Arc::clone(&senders),
                Arc::clone(&filler),
                Arc::clone(&sent),
                Arc::clone(&sent_bytes),
            );
            tasks.spawn(async move {
                let mut connection = Connection::from_address(attack.server, Some(local));
                // Each pair's own token bucket: the send rate the server allows one peer.
                let mut buckets: Vec<(f64, Instant)> = Vec::new();
                loop {
                    let mine: Vec<(usize, String, Joined, String)> = senders
                        .lock()
                        .iter()
                        .enumerate()
                        .skip(worker)
                        .step_by(SENDER_CONNECTIONS)
                        .map(|(index, (room, a, b))| {
                            (index, room.clone(), a.clone(), b.peer_id.clone())
                        })
                        .collect();
                    let mut sent_any = false;
                    for (slot, (_, room, a, b)) in mine.iter().enumerate() {
                        if attack.stopped() {
                            return;
                        }
                        if buckets.len() <= slot {
                            buckets.push((SEND_BURST, Instant::now()));
                        }
                        let (tokens, since) = &mut buckets[slot];
                        *tokens = (*tokens + since.elapsed().as_secs_f64() * SEND_RATE_PER_SEC)
                            .min(SEND_BURST);
                        *since = Instant::now();
                        if *tokens < 1.0 {
                            continue;
                        }
                        *tokens -= 1.0;
                        sent_any = true;
                        let prefix = format!(r#"{{"type":"bulk","to":"{b}","data":""#);
                        let body: [&[u8]; 3] = [prefix.as_bytes(), &filler, b"\"}"];
                        match send(&mut connection, room, a, &body).await {
                            Ok(202) => {
                                sent.fetch_add(1, Ordering::Relaxed);
                                sent_bytes.fetch_add(
                                    (prefix.len() + filler.len() + 2) as u64,
                                    Ordering::Relaxed,
                                );
                            }
                            Ok(status) => attack
                                .errors
                                .record(&Failure::Status(status, "send".into())),
                            Err(failure) => attack.errors.record(&failure),
                        }
                    }
                    if !sent_any && !attack.sleep(Duration::from_millis(10)).await {
                        return;
                    }
                }
            });
        }
        let (attack, pairs_joined, setup_done, unread_open) = (
            Arc::clone(attack),
            Arc::clone(&pairs_joined),
            Arc::clone(&setup_done),
            Arc::clone(&unread_open),
        );
        holders.spawn(async move {
            let mut connection = Connection::from_address(attack.server, Some(local));
            let setup = Instant::now();
            for pair in 0..attack.abuse.peers / 2 {
                if setup.elapsed() > SETUP_LIMIT {
                    break;
                }
                let room = format!("abuse-{}-m{address}-{pair}", attack.run_id);
                let Some(a) = join_patiently(&attack, &mut connection, &room).await else {
                    break;
                };
                let Some(b) = join_patiently(&attack, &mut connection, &room).await else {
                    break;
                };
                let (a, b) = match (a, b) {
                    (Ok(a), Ok(b)) => (a, b),
                    (Err(failure), _) | (_, Err(failure)) => {
                        attack.errors.record(&failure);
                        break;
                    }
                };
                let next_presence = Instant::now() + PRESENCE_EVERY;
                receivers.lock().push(Held {
                    room: room.clone(),
                    peer: b.clone(),
                    next_presence,
                });
                senders_present.lock().push(Held {
                    room: room.clone(),
                    peer: a.clone(),
                    next_presence,
                });
                senders.lock().push((room, a, b));
                pairs_joined.fetch_add(1, Ordering::Relaxed);
            }
            setup_done.fetch_add(1, Ordering::Relaxed);
            // The receivers with the oldest backlogs: long-polls and streams never read.
            let host = attack.server.to_string();
            let targets: Vec<(String, Joined)> = receivers
                .lock()
                .iter()
                .take(UNREAD_POLLS + UNREAD_STREAMS)
                .map(|held| (held.room.clone(), held.peer.clone()))
                .collect();
            let mut unread = Vec::new();
            for (index, (room, peer)) in targets.iter().enumerate() {
                let request = if index < UNREAD_POLLS {
                    format!(
                        "GET /api/rooms/{room}/peers/{}/messages?after=0 HTTP/1.1\r\n\
                         Host: {host}\r\nAuthorization: Bearer {}\r\n\r\n",
                        peer.peer_id, peer.token
                    )
                } else {
                    format!(
                        "GET /api/rooms/{room}/peers/{}/events?token={} HTTP/1.1\r\n\
                         Host: {host}\r\nAccept: text/event-stream\r\n\r\n",
                        peer.peer_id, peer.token
                    )
                };
                match unread_request(attack.server, local, &request, false).await {
                    Ok(stream) => {
                        unread_open.fetch_add(1, Ordering::Relaxed);
                        unread.push(stream);
                    }
                    Err(error) => attack.errors.record(&Failure::Connection(error)),
                }
            }
            // Held, unread, until the shape ends.
            let mut stop = attack.stop.clone();
            let _ = stop.wait_for(|stopped| *stopped).await;
            drop(unread);
        });
    }
    // Set up when every address has joined what it could; then held.
    while (setup_done.load(Ordering::Relaxed) as usize) < attack.abuse.addresses {
        if !attack.sleep(Duration::from_millis(100)).await {
            break;
        }
    }
    eprintln!(
        "memory: {} pairs joined; long-polls and streams left unread",
        pairs_joined.load(Ordering::Relaxed)
    );
    attack.hold().await;
    tasks.abort_all();
    holders.abort_all();
    vec![
        ("pairs", json!(pairs_joined.load(Ordering::Relaxed)), ""),
        ("messages_accepted", json!(sent.load(Ordering::Relaxed)), ""),
        (
            "message_mib_accepted",
            json!((sent_bytes.load(Ordering::Relaxed) as f64 / 1048576.0).round()),
            "MiB",
        ),
        (
            "unread_answers_open",
            json!(unread_open.load(Ordering::Relaxed)),
            "long-polls and streams",
        ),
    ]
}

/// Per address: connections that trickle a join body, counted every 10 s.
async fn connections(attack: &Arc<Attack>) -> Figures {
    let abuse = &attack.abuse;
    let open = Arc::new(AtomicU64::new(0));
    let closed_by_server = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let not_opened = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let room = format!("abuse-{}-trickle", attack.run_id);
    let head = format!(
        "POST /api/rooms/{room}/peers HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {TRICKLE_LENGTH}\r\n\r\n",
        attack.server
    );
    eprintln!(
        "connections: {} addresses × {} trickling connections …",
        abuse.addresses, abuse.connections
    );
    let opening = Instant::now();
    let mut connected = 0u64;
    for index in 0..abuse.addresses * abuse.connections {
        let local = attacker(index % abuse.addresses);
        if attack.stopped() {
            break;
        }
        // A server that no longer accepts leaves a connect waiting in its backlog.
        let connecting =
            tokio::time::timeout(CONNECT_TIMEOUT, http::connect(attack.server, Some(local)));
        let stream = match connecting
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            Ok(stream) => stream,
            Err(error) => {
                not_opened.fetch_add(1, Ordering::Relaxed);
                attack
                    .errors
                    .record(&Failure::Connection(ConnectionError(error.to_string())));
                continue;
            }
        };
        open.fetch_add(1, Ordering::Relaxed);
        connected += 1;
        let (attack, open, closed_by_server, answered, head) = (
            Arc::clone(attack),
            Arc::clone(&open),
            Arc::clone(&closed_by_server),
            Arc::clone(&answered),
            head.clone(),
        );
        tasks.spawn(async move {
            let mut stream = stream;
            let mut stop = attack.stop.clone();
            let mut written = 0;
            let mut buffer = [0u8; 512];
            let outcome: std::io::Result<Option<u16>> = async {
                stream.write_all(head.as_bytes()).await?;
                loop {
                    tokio::select! {
                        read = stream.read(&mut buffer) => {
                            let read = read?;
                            let status = std::str::from_utf8(&buffer[..read])
                                .ok()
                                .and_then(|text| text.get(9..12))
                                .and_then(|code| code.parse().ok());
                            return Ok(status);
                        }
                        _ = tokio::time::sleep(TRICKLE_EVERY), if written < TRICKLE_LENGTH => {
                            stream.write_all(b" ").await?;
                            written += 1;
                        }
                        _ = stop.changed() => return Err(std::io::ErrorKind::Interrupted.into()),
                    }
                }
            }
            .await;
            match outcome {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return,
                Ok(Some(status)) => *answered.lock().entry(status).or_default() += 1,
                Ok(None) | Err(_) => {}
            }
            open.fetch_sub(1, Ordering::Relaxed);
            closed_by_server.fetch_add(1, Ordering::Relaxed);
        });
    }
    // Connections the server accepted, some of which it may have closed already.
    let opened = connected;
    eprintln!(
        "connections: {opened} opened in {:.1} s, {} not opened",
        opening.elapsed().as_secs_f64(),
        not_opened.load(Ordering::Relaxed)
    );
    let mut figures: Figures = vec![
        ("connections_opened", json!(opened), ""),
        (
            "connections_not_opened",
            json!(not_opened.load(Ordering::Relaxed)),
            "connect failed",
        ),
    ];
    const MARKS: [&str; 6] = [
        "open_after_10s",
        "open_after_20s",
        "open_after_30s",
        "open_after_40s",
        "open_after_50s",
        "open_after_60s",
    ];
    let held = Instant::now();
    let mut mark = 0;
    while held.elapsed() < abuse.duration && mark < MARKS.len() {
        if !attack.sleep(CHECKPOINT_EVERY).await {
            break;
        }
        let still = open.load(Ordering::Relaxed);
        eprintln!("connections: {still} still open after {}0 s", mark + 1);
        figures.push((MARKS[mark], json!(still), ""));
        mark += 1;
    }
    figures.push((
        "closed_by_server",
        json!(closed_by_server.load(Ordering::Relaxed)),
        "",
    ));
    let answered: serde_json::Map<String, Value> = answered
        .lock()
        .iter()
        .map(|(status, count)| (status.to_string(), json!(count)))
        .collect();
    figures.push(("answers_before_closing", Value::Object(answered), ""));
    tasks.abort_all();
    figures
}

/// Per address: one peer in each of as many rooms as the server allows (up to `--peers`).
async fn rooms(attack: &Arc<Attack>) -> Figures {
    let abuse = &attack.abuse;
    let mut tasks = JoinSet::new();
    let mut joiners = JoinSet::new();
    eprintln!(
        "rooms: {} addresses, one peer per room, up to {} rooms each …",
        abuse.addresses, abuse.peers
    );
    for address in 0..abuse.addresses {
        let local = attacker(address);
        let held: Arc<Mutex<Vec<Held>>> = Arc::default();
        tasks.spawn(keep_present(
            Arc::clone(attack),
            local,
            Arc::clone(&held),
            false,
        ));
        let attack = Arc::clone(attack);
        joiners.spawn(async move {
            let mut connection = Connection::from_address(attack.server, Some(local));
            let setup = Instant::now();
            let mut refusal = None;
            for room in 0..attack.abuse.peers {
                if setup.elapsed() > SETUP_LIMIT {
                    break;
                }
                let room = format!("abuse-{}-r{address}-{room}", attack.run_id);
                match join_patiently(&attack, &mut connection, &room).await {
                    None => break,
                    Some(Ok(peer)) => held.lock().push(Held {
                        room,
                        peer,
                        next_presence: Instant::now() + PRESENCE_EVERY,
                    }),
                    Some(Err(failure)) => {
                        refusal = Some(failure.detail());
                        attack.errors.record(&failure);
                        break;
                    }
                }
            }
            let count = held.lock().len() as u64;
            (count, refusal)
        });
    }
    let mut per_address = Vec::new();
    let mut refusal = None;
    while let Some(outcome) = joiners.join_next().await {
        if let Ok((count, why)) = outcome {
            per_address.push(count);
            refusal = refusal.or(why);
        }
    }
    let total: u64 = per_address.iter().sum();
    let most = per_address.iter().copied().max().unwrap_or(0);
    let least = per_address.iter().copied().min().unwrap_or(0);
    eprintln!("rooms: {total} rooms held ({least} to {most} per address)");
    attack.hold().await;
    tasks.abort_all();
    let mut figures: Figures = vec![
        ("rooms_held", json!(total), ""),
        ("rooms_per_address_max", json!(most), ""),
        ("rooms_per_address_min", json!(least), ""),
        (
            "max_rooms",
            json!(abuse.max_rooms),
            "as given by --max-rooms",
        ),
        (
            "addresses_to_exhaust_max_rooms",
            json!(abuse.max_rooms.div_ceil(most.max(1))),
            "max_rooms / rooms per address",
        ),
    ];
    if let Some(refusal) = refusal {
        figures.push(("first_refusal", json!(refusal), ""));
    }
    figures
}

/// An invite-only room and its peer, asked for without a credential.
async fn listing(attack: &Arc<Attack>) -> Figures {
    let abuse = &attack.abuse;
    let room = &abuse.room;
    let mut figures = Figures::new();
    let Some(join_token) = &abuse.join_token else {
        figures.push((
            "skipped",
            json!("--join-token is needed to put a peer in the room"),
            "",
        ));
        return figures;
    };
    let mut member = Connection::new(attack.server);
    let mut request = Vec::with_capacity(1024);
    member.head(
        &mut request,
        "POST",
        &format!("/api/rooms/{room}/peers"),
        Some(join_token),
        0,
    );
    let peer = match member.request(&request).await {
        Ok(answer) if answer.status == 201 => serde_json::from_slice::<Joined>(answer.body).ok(),
        Ok(answer) => {
            let failure = Failure::Status(
                answer.status,
                String::from_utf8_lossy(answer.body).into_owned(),
            );
            figures.push(("member_join", json!(failure.detail()), ""));
            None
        }
        Err(error) => {
            figures.push(("member_join", json!(error.0), ""));
            None
        }
    };
    let Some(peer) = peer else {
        return figures;
    };
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut listed = false;
    for address in 0..abuse.addresses {
        let mut connection = Connection::from_address(attack.server, Some(attacker(address)));
        for (name, path) in [
            ("room", format!("/api/rooms/{room}")),
            ("peer", format!("/api/rooms/{room}/peers/{}", peer.peer_id)),
        ] {
            connection.head(&mut request, "GET", &path, None, 0);
            match connection.request(&request).await {
                Ok(answer) => {
                    let body = String::from_utf8_lossy(answer.body);
                    listed |= body.contains(&peer.peer_id);
                    *statuses
                        .entry(format!("{name} {}", answer.status))
                        .or_default() += 1;
                }
                Err(error) => attack.errors.record(&Failure::Connection(error)),
            }
        }
    }
    let _ = http::leave(&mut member, room, &peer).await;
    figures.push((
        "statuses_without_credential",
        json!(statuses),
        "GET room, GET peer",
    ));
    figures.push(("peer_id_disclosed", json!(listed), ""));
    figures
}
