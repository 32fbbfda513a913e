//! Idle: how many SSE streams the server holds, how long they take to open, and what each costs
//! in server memory (resident set, from `/proc/<pid>/status` when `--server-pid` is given):
//! measured after joining (per peer), with every stream open (per stream), after the streams
//! close, and after the peers leave.
//!
//! Delivery is checked too: the `k`-th peer to join a room of `n` has `n - 1 - k` `join` events
//! waiting, which its stream must replay after `ready`, with ids 1, 2, 3, …

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde_json::json;
use tokio::sync::watch;

use crate::http::{self, Connection, Envelope, Failure, Joined};
use crate::options::{Idle, Options};
use crate::report::{self, Delivery, Errors, IdCheck, Report};

/// Joins and leaves in flight at once.
const SETUP_CONCURRENCY: usize = 64;
/// The longest wait for the server's memory to fall back after the streams close.
const SETTLE: Duration = Duration::from_secs(30);

pub async fn run(options: &Options, idle: Idle) -> Result<Report, String> {
    let server = options.server;
    let pid = options.server_pid;
    let needed = idle.streams as u64 + 64;
    if let Some(limit) = report::open_files_limit().filter(|limit| *limit < needed) {
        return Err(format!(
            "{} streams need about {needed} open files, and this process may open {limit}: \
             raise it with `ulimit -n` (up to the hard limit, `ulimit -Hn`)",
            idle.streams
        ));
    }
    let run_id = report::run_id();
    let delivery = Arc::new(Delivery::default());
    let errors = Arc::new(Errors::default());

    let rss_start = report::server_rss_kib(pid);
    let rooms = idle.streams.div_ceil(idle.peers);
    eprintln!("joining {} peers in {rooms} rooms …", idle.streams);
    let peers: Vec<(String, Joined, u64)> = stream::iter(0..rooms)
        .map(|room| {
            let name = format!("idle-{run_id}-{room}");
            let size = idle.peers.min(idle.streams - room * idle.peers);
            async move {
                let mut connection = Connection::new(server);
                let mut joined = Vec::with_capacity(size);
                for k in 0..size {
                    let peer = http::join(&mut connection, &name).await?;
                    // The k-th peer hears of every peer that joins after it.
                    joined.push((name.clone(), peer, (size - 1 - k) as u64));
                }
                Ok::<_, Failure>(joined)
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|failure| format!("joining failed: {}", failure.detail()))?
        .into_iter()
        .flatten()
        .collect();
    let peers = Arc::new(peers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_joined = report::server_rss_kib(pid);

    eprintln!(
        "opening {} SSE streams, {} at a time …",
        idle.streams, idle.concurrency
    );
    let client = http::stream_client();
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicU64::new(0));
    let progress = {
        let open = Arc::clone(&open);
        report::progress(move || {
            let rss = report::server_rss_kib(pid).map_or(String::new(), |kib| {
                format!(", server RSS {} KiB", report::format_number(kib as f64))
            });
            format!("{} streams open{rss}", open.load(Ordering::Relaxed))
        })
    };
    let started = Instant::now();
    let mut open_times = report::latency_histogram();
    let opened: Vec<_> = stream::iter(0..peers.len())
        .map(|index| {
            let (peers, client, delivery, open, stop) = (
                Arc::clone(&peers),
                client.clone(),
                Arc::clone(&delivery),
                Arc::clone(&open),
                stop_rx.clone(),
            );
            async move {
                let begun = Instant::now();
                let (room, peer, _) = &peers[index];
                let mut events = http::events(&client, server, room, peer).await?;
                match events.next().await {
                    Some(Ok(event)) if event.event == "ready" => {}
                    other => return Err(Failure::Invalid(format!("no ready event: {other:?}"))),
                }
                let took = begun.elapsed();
                open.fetch_add(1, Ordering::Relaxed);
                Ok((index, took, tokio::spawn(hold(events, delivery, stop))))
            }
        })
        .buffer_unordered(idle.concurrency)
        .collect()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let mut holders = Vec::with_capacity(opened.len());
    for outcome in opened {
        match outcome {
            Ok((index, took, holder)) => {
                let _ = open_times.record((took.as_micros() as u64).max(1));
                holders.push((index, holder));
            }
            Err(failure) => errors.record(&failure),
        }
    }
    let held = holders.len();
    eprintln!(
        "{held} streams open in {open_seconds:.2} s; holding for {:?} …",
        idle.hold
    );
    tokio::time::sleep(idle.hold).await;
    let rss_open = report::server_rss_kib(pid);

    let _ = stop_tx.send(true);
    // Compare each stream's join events with what its peer had waiting.
    for (index, holder) in holders {
        let got = holder.await.map_err(|error| error.to_string())?;
        delivery.tally(peers[index].2, got);
    }
    progress.abort();

    // The server notices a closed stream on its next write at the latest (a heartbeat).
    eprintln!("streams closed; waiting for the server's memory to settle …");
    let closing = Instant::now();
    let mut rss_closed = report::server_rss_kib(pid);
    if let (Some(joined), Some(open)) = (rss_joined, rss_open) {
        let target = joined + open.saturating_sub(joined) / 10;
        while rss_closed.is_some_and(|rss| rss > target) && closing.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(250)).await;
            rss_closed = report::server_rss_kib(pid);
        }
    }
    let settle_seconds = closing.elapsed().as_secs_f64();

    eprintln!("leaving …");
    let left: Vec<Result<(), Failure>> = stream::iter(0..peers.len())
        .map(|index| {
            let peers = Arc::clone(&peers);
            async move {
                let (room, peer, _) = &peers[index];
                http::leave(&mut Connection::new(server), room, peer).await
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    for failure in left.iter().filter_map(|outcome| outcome.as_ref().err()) {
        errors.record(failure);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_left = report::server_rss_kib(pid);

    let settings = json!({
        "streams": idle.streams,
        "peers_per_room": idle.peers,
        "concurrency": idle.concurrency,
        "hold_s": idle.hold.as_secs_f64(),
        "server_pid": pid,
        "open_files_limit": report::open_files_limit(),
    });
    let mut report = Report::new("idle", settings, &delivery, &errors);
    report.figure("streams_held", held as u64, "streams");
    report.figure("open_all_s", (open_seconds * 1000.0).round() / 1000.0, "s");
    report.figure(
        "opens_per_s",
        (held as f64 / open_seconds).round(),
        "streams/s",
    );
    let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
    report.figure("open_p50_ms", ms(open_times.value_at_quantile(0.5)), "ms");
    report.figure("open_p99_ms", ms(open_times.value_at_quantile(0.99)), "ms");
    if let (Some(start), Some(joined), Some(open), Some(closed), Some(left)) =
        (rss_start, rss_joined, rss_open, rss_closed, rss_left)
    {
        let per = |kib: u64| (kib as f64 * 1024.0 / idle.streams as f64).round();
        report.figure("server_rss_start_kib", start, "KiB");
        report.figure("server_rss_joined_kib", joined, "KiB");
        report.figure("server_rss_open_kib", open, "KiB");
        report.figure("server_rss_closed_kib", closed, "KiB");
        report.figure("server_rss_left_kib", left, "KiB");
        report.figure("bytes_per_peer", per(joined.saturating_sub(start)), "B");
        report.figure("bytes_per_stream", per(open.saturating_sub(joined)), "B");
        report.figure(
            "stream_memory_returned_pct",
            if open > joined {
                ((open.saturating_sub(closed)) as f64 * 100.0 / (open - joined) as f64).round()
            } else {
                100.0
            },
            "%",
        );
        report.figure("settle_s", (settle_seconds * 10.0).round() / 10.0, "s");
    }
    Ok(report)
}

/// Holds one stream open, checking the ids of what it replays, until told to stop. Returns how
/// many messages it received.
async fn hold(
    mut events: http::Events,
    delivery: Arc<Delivery>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut ids = IdCheck::default();
    let mut received = 0;
    loop {
        let Some(event) = crate::unless_stopped(&mut stop, events.next()).await else {
            break;
        };
        match event {
            Some(Ok(event)) if event.event == "reset" => {
                delivery.resets.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(event)) if event.data.is_empty() => {}
            Some(Ok(event)) => {
                if let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(&event.data) {
                    ids.see(envelope.id, &delivery);
                    received += 1;
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    received
}
