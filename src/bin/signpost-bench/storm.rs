//! Storm: a reconnect storm after a restart. The generator starts the server binary itself
//! (`--server-bin`, with `ROCKET_PROFILE=bench` on the port of `--url`), puts N peers in rooms of
//! 4 with open SSE streams, restarts the server with SIGTERM (a routine deploy; the memory store
//! forgets everyone), and lets every peer come back as signpost.js does: after its stream ends,
//! a backoff with full jitter, a question to the server (`GET` its peer), a rejoin when the
//! server has forgotten it (retried with backoff, honouring `Retry-After` on 429 and 503), and a
//! new stream. A peer is back when its new stream says `ready`.
//!
//! Reported: the time until every peer is back (from SIGTERM, and from the restarted server
//! listening), the join latency during the storm as the clients saw it (p50, p99, max), answers
//! by status (the retried 429/503 apart from the errors), the restarted server's peak resident
//! memory, and whether every room is whole again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::http::{self, Failure, Joined};
use crate::options::{Options, Storm};
use crate::report::{self, Delivery, Errors, Report};

/// Peers per room, as the issue describes a storm: small calls.
const ROOM_SIZE: usize = 4;
/// Joins and streams opening at once while the peers are set up (before the storm).
const SETUP_CONCURRENCY: usize = 64;
/// signpost.js's backoff (DEFAULTS.backoffMinMs and backoffMaxMs): the first ceiling and the cap.
/// Keep them equal: the storm measures what signpost.js pages do.
const BACKOFF_FIRST: Duration = Duration::from_millis(1000);
const BACKOFF_CAP: Duration = Duration::from_millis(4000);
/// How long the storm may take before the run gives up on it.
const STORM_LIMIT: Duration = Duration::from_secs(120);

/// The server process the storm restarts.
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts `binary` on `address` with the bench profile, and waits until it accepts
    /// connections (the bench profile logs warnings only, so there is no banner to wait for).
    fn start(binary: &PathBuf, address: SocketAddr) -> Result<ServerProcess, String> {
        let mut child = Command::new(binary)
            .env("ROCKET_PROFILE", "bench")
            .env("ROCKET_ADDRESS", address.ip().to_string())
            .env("ROCKET_PORT", address.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("starting {}: {error}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(address).is_ok() {
                return Ok(ServerProcess { child });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{} exited: {status}", binary.display()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "{} does not accept connections on {address} after 30 s",
                    binary.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and waits until the process has exited.
    fn stop(mut self) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|error| format!("kill: {error}"))?;
        if !status.success() {
            return Err("kill -TERM failed".into());
        }
        self.child
            .wait()
            .map_err(|error| format!("waiting for the server: {error}"))?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the peers share: counters, the storm's clock and the join latencies in it.
struct Shared {
    server: SocketAddr,
    client: reqwest::Client,
    /// Peers whose stream is open (`ready` seen) and not yet cut.
    connected: AtomicU64,
    /// Set at SIGTERM: from then on joins are timed and peers that come back are counted.
    storm: AtomicBool,
    storm_started: Mutex<Option<Instant>>,
    /// Peers back (a new stream `ready` after the storm started), and when the last came back.
    back: AtomicU64,
    last_back: Mutex<Option<Instant>>,
    join_latency: Mutex<Histogram<u64>>,
    /// Answers asking to come back later (429, 503), which the peers honoured and retried.
    retried: Mutex<BTreeMap<u16, u64>>,
    /// Attempts that found no server (connection refused while it restarted).
    unreachable: AtomicU64,
    errors: Errors,
}

pub async fn run(options: &Options, storm: Storm) -> Result<Report, String> {
    let needed = storm.peers as u64 * 2 + 64;
    if let Some(limit) = report::open_files_limit().filter(|limit| *limit < needed) {
        return Err(format!(
            "{} peers need about {needed} open files, and this process may open {limit}: \
             raise it with `ulimit -n`",
            storm.peers
        ));
    }
    let server = ServerProcess::start(&storm.server_bin, options.server)?;
    let run_id = report::run_id();
    let shared = Arc::new(Shared {
        server: options.server,
        client: http::stream_client(),
        connected: AtomicU64::new(0),
        storm: AtomicBool::new(false),
        storm_started: Mutex::new(None),
        back: AtomicU64::new(0),
        last_back: Mutex::new(None),
        join_latency: Mutex::new(report::latency_histogram()),
        retried: Mutex::new(BTreeMap::new()),
        unreachable: AtomicU64::new(0),
        errors: Errors::default(),
    });

    let rooms = storm.peers.div_ceil(ROOM_SIZE);
    eprintln!(
        "joining {} peers in {rooms} rooms of {ROOM_SIZE}, streams open …",
        storm.peers
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let setup = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = Vec::with_capacity(storm.peers);
    for index in 0..storm.peers {
        let room = format!("storm-{run_id}-{}", index / ROOM_SIZE);
        let shared = Arc::clone(&shared);
        let setup = Arc::clone(&setup);
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            peer(shared, room, index as u64, setup, stop).await
        }));
    }
    let setup_deadline = Instant::now() + Duration::from_secs(120);
    while shared.connected.load(Ordering::Relaxed) < storm.peers as u64 {
        if Instant::now() > setup_deadline {
            return Err(format!(
                "only {} of {} streams opened within 120 s",
                shared.connected.load(Ordering::Relaxed),
                storm.peers
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = report::server_rss_kib(Some(server.pid()));
    eprintln!("all {} streams open; restarting the server …", storm.peers);

    let progress = {
        let shared = Arc::clone(&shared);
        let peers = storm.peers;
        report::progress(move || {
            format!(
                "back {} / {peers}, streams open {}",
                shared.back.load(Ordering::Relaxed),
                shared.connected.load(Ordering::Relaxed)
            )
        })
    };
    let sigterm = Instant::now();
    *shared.storm_started.lock() = Some(sigterm);
    shared.storm.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .map_err(|error| error.to_string())??;
    let stopped = sigterm.elapsed();
    let binary = storm.server_bin.clone();
    let address = options.server;
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(&binary, address))
        .await
        .map_err(|error| error.to_string())??;
    let listening = Instant::now();
    eprintln!(
        "the server stopped after {:.2} s and listens again after {:.2} s",
        stopped.as_secs_f64(),
        sigterm.elapsed().as_secs_f64()
    );

    let mut rss_peak = 0;
    let storm_deadline = Instant::now() + STORM_LIMIT;
    while shared.back.load(Ordering::Relaxed) < storm.peers as u64 {
        if Instant::now() > storm_deadline {
            break;
        }
        rss_peak = rss_peak.max(report::server_rss_kib(Some(server.pid())).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.abort();
    let back = shared.back.load(Ordering::Relaxed);
    let last_back = *shared.last_back.lock();
    // Peak resident memory of the restarted server over its whole life, the storm included.
    let rss_hwm = peak_rss_kib(server.pid());
    let whole = whole_rooms(&shared, &run_id, rooms).await;

    let _ = stop_tx.send(true);
    for task in tasks {
        task.abort();
    }
    let _ = tokio::task::spawn_blocking(move || server.stop()).await;

    let settings = json!({
        "peers": storm.peers,
        "room_size": ROOM_SIZE,
        "backoff_ms": [BACKOFF_FIRST.as_millis() as u64, BACKOFF_CAP.as_millis() as u64],
    });
    let mut report = Report::new("storm", settings, &Delivery::default(), &shared.errors);
    report.figure("peers", storm.peers, "");
    report.figure("peers back", back, "");
    let seconds = |instant: Option<Instant>, from: Instant| {
        instant.map_or(Value::Null, |at| {
            json!((at.duration_since(from).as_secs_f64() * 1000.0).round() / 1000.0)
        })
    };
    report.figure("all back after SIGTERM", seconds(last_back, sigterm), "s");
    report.figure(
        "all back after listening",
        seconds(last_back, listening),
        "s",
    );
    report.figure(
        "server down (SIGTERM→listening)",
        json!((listening.duration_since(sigterm).as_secs_f64() * 1000.0).round() / 1000.0),
        "s",
    );
    let latency = shared.join_latency.lock().clone();
    let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
    report.figure("storm joins", latency.len(), "");
    report.figure("join p50", ms(latency.value_at_quantile(0.50)), "ms");
    report.figure("join p99", ms(latency.value_at_quantile(0.99)), "ms");
    report.figure("join max", ms(latency.max()), "ms");
    let retried: BTreeMap<String, u64> = shared
        .retried
        .lock()
        .iter()
        .map(|(status, count)| (status.to_string(), *count))
        .collect();
    report.figure("retried (429/503)", json!(retried), "");
    report.figure(
        "attempts while down",
        shared.unreachable.load(Ordering::Relaxed),
        "",
    );
    report.figure("rooms", rooms, "");
    report.figure("rooms whole again", whole, "");
    report.figure(
        "server RSS before",
        rss_before.map_or(Value::Null, |kib| json!(kib / 1024)),
        "MiB",
    );
    report.figure(
        "server RSS peak (storm)",
        json!(rss_hwm.unwrap_or(rss_peak) / 1024),
        "MiB",
    );
    if back < storm.peers as u64 {
        return Err(format!(
            "only {back} of {} peers came back within {STORM_LIMIT:?}:\n{}",
            storm.peers,
            report.to_human()
        ));
    }
    Ok(report)
}

/// One peer, as signpost.js behaves: join, stream, and after the stream ends, backoff, ask,
/// rejoin if forgotten, stream again. Runs until stopped.
async fn peer(
    shared: Arc<Shared>,
    room: String,
    index: u64,
    setup: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut jitter = Jitter::new(index);
    let permit = setup.acquire().await;
    let Some(mut joined) = rejoin(&shared, &room, &mut jitter).await else {
        return;
    };
    let original = joined.peer_id.clone();
    let mut events = match http::events(&shared.client, shared.server, &room, &joined).await {
        Ok(events) => Some(events),
        Err(failure) => {
            shared.errors.record(&failure);
            None
        }
    };
    drop(permit);
    let mut failures = 0u32;
    loop {
        if let Some(mut stream) = events.take() {
            let mut ready = false;
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = stop.changed() => return,
                };
                match next {
                    Some(Ok(event)) if event.event == "ready" => {
                        ready = true;
                        failures = 0;
                        shared.connected.fetch_add(1, Ordering::Relaxed);
                        if shared.storm.load(Ordering::Relaxed) && joined.peer_id != original {
                            shared.back.fetch_add(1, Ordering::Relaxed);
                            *shared.last_back.lock() = Some(Instant::now());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            if ready {
                shared.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // The stream ended or did not open: back off, then ask the server about this peer.
        failures += 1;
        tokio::time::sleep(jitter.backoff(failures)).await;
        let url = format!(
            "http://{}/api/rooms/{room}/peers/{}",
            shared.server, joined.peer_id
        );
        match shared.client.get(url).send().await {
            Ok(response) if response.status() == 404 => {
                let Some(again) = rejoin(&shared, &room, &mut jitter).await else {
                    return;
                };
                joined = again;
            }
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                let status = response.status().as_u16();
                if status != 503 {
                    let body = response.text().await.unwrap_or_default();
                    shared.errors.record(&Failure::Status(status, body));
                }
                continue;
            }
            Err(_) => {
                shared.unreachable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        match http::events(&shared.client, shared.server, &room, &joined).await {
            Ok(stream) => events = Some(stream),
            Err(Failure::Connection(_)) => {
                shared.unreachable.fetch_add(1, Ordering::Relaxed);
            }
            Err(failure) => shared.errors.record(&failure),
        }
    }
}

/// Joins `room`, retrying as signpost.js does until it succeeds; `None` on a refusal that no
/// retry can change (counted as an error). Joins in the storm are timed.
async fn rejoin(shared: &Shared, room: &str, jitter: &mut Jitter) -> Option<Joined> {
    let url = format!("http://{}/api/rooms/{room}/peers", shared.server);
    let mut failures = 0;
    loop {
        let started = Instant::now();
        let answer = shared.client.post(&url).send().await;
        let elapsed = started.elapsed();
        failures += 1;
        let response = match answer {
            Ok(response) => response,
            Err(_) => {
                shared.unreachable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter.backoff(failures)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()?.parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        let body = response.bytes().await.unwrap_or_default();
        if shared.storm.load(Ordering::Relaxed) {
            let _ = shared
                .join_latency
                .lock()
                .record(elapsed.as_micros().max(1) as u64);
        }
        match status {
            201 => {
                return serde_json::from_slice(&body)
                    .map_err(|error| {
                        shared
                            .errors
                            .record(&Failure::Invalid(format!("join answer: {error}")));
                    })
                    .ok()
            }
            429 | 503 => {
                *shared.retried.lock().entry(status).or_default() += 1;
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(wait + jitter.backoff(failures)).await;
            }
            _ => {
                let body = String::from_utf8_lossy(&body).into_owned();
                shared.errors.record(&Failure::Status(status, body));
                if status < 500 {
                    return None;
                }
                tokio::time::sleep(jitter.backoff(failures)).await;
            }
        }
    }
}

/// Counts the rooms that hold exactly their peers again.
async fn whole_rooms(shared: &Shared, run_id: &str, rooms: usize) -> usize {
    let mut whole = 0;
    for room in 0..rooms {
        let url = format!("http://{}/api/rooms/storm-{run_id}-{room}", shared.server);
        let Ok(response) = shared.client.get(url).send().await else {
            continue;
        };
        let Ok(bytes) = response.bytes().await else {
            continue;
        };
        let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if body["peers"].as_array().map(Vec::len) == Some(ROOM_SIZE) {
            whole += 1;
        }
    }
    whole
}

/// The process's peak resident memory in KiB (`VmHWM`), from `/proc/<pid>/status`.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Full jitter, as signpost.js: a uniformly random wait up to min(cap, first × 2^(n-1)).
/// xorshift64*: each peer its own sequence, no shared state, no dependency.
struct Jitter(u64);

impl Jitter {
    fn new(index: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Jitter((nanos ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let ceiling = BACKOFF_FIRST
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(BACKOFF_CAP);
        ceiling.mul_f64(self.next_unit())
    }
}
