//! Churn: joins plus leaves per second. Workers join a room and leave it again, round after
//! round, over `--rooms` rooms. Each room also has an observer on an SSE stream, which must see
//! one `join` and one `leave` event for every join and leave that succeeded in its room, with
//! gapless ids: that is this mode's delivery check. The latency reported is the round trip of
//! one join or leave request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;

use crate::http::{self, Connection, Envelope, Failure, Joined};
use crate::options::{Churn, Options};
use crate::report::{self, Delivery, Errors, IdCheck, Report};

/// The longest wait, after the workers stop, for observers to see the last events.
const DRAIN: Duration = Duration::from_secs(10);

struct Room {
    name: String,
    /// Successful joins plus leaves by workers: the events its observer must see.
    changes: AtomicU64,
    /// Events its observer saw.
    seen: AtomicU64,
}

pub async fn run(options: &Options, churn: Churn) -> Result<Report, String> {
    let server = options.server;
    let run_id = report::run_id();
    let delivery = Arc::new(Delivery::default());
    let errors = Arc::new(Errors::default());
    let rooms: Arc<Vec<Room>> = Arc::new(
        (0..churn.rooms)
            .map(|index| Room {
                name: format!("churn-{run_id}-{index}"),
                changes: AtomicU64::new(0),
                seen: AtomicU64::new(0),
            })
            .collect(),
    );

    eprintln!("placing an observer in each of {} rooms …", churn.rooms);
    let client = http::stream_client();
    let (stop_tx, stop_rx) = watch::channel(false);
    let observers: Vec<(Joined, tokio::task::JoinHandle<()>)> = stream::iter(0..churn.rooms)
        .map(|index| {
            let (rooms, client, delivery, stop) = (
                Arc::clone(&rooms),
                client.clone(),
                Arc::clone(&delivery),
                stop_rx.clone(),
            );
            async move {
                let room = &rooms[index].name;
                let observer = http::join(&mut Connection::new(server), room).await?;
                let mut events = http::events(&client, server, room, &observer).await?;
                match events.next().await {
                    Some(Ok(event)) if event.event == "ready" => {}
                    other => return Err(Failure::Invalid(format!("no ready event: {other:?}"))),
                }
                let task = tokio::spawn(observe(events, rooms, index, delivery, stop));
                Ok((observer, task))
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|failure: Failure| format!("placing observers failed: {}", failure.detail()))?;

    let joins = Arc::new(AtomicU64::new(0));
    let leaves = Arc::new(AtomicU64::new(0));
    let progress = {
        let (joins, leaves) = (Arc::clone(&joins), Arc::clone(&leaves));
        let previous = AtomicU64::new(0);
        report::progress(move || {
            let total = joins.load(Ordering::Relaxed) + leaves.load(Ordering::Relaxed);
            let last = previous.swap(total, Ordering::Relaxed);
            format!(
                "joins+leaves {total} ({}/s)",
                report::format_number((total - last) as f64)
            )
        })
    };
    eprintln!(
        "churning for {:?} with {} workers …",
        churn.duration, churn.workers
    );
    let started = Instant::now();
    let deadline = started + churn.duration;
    let workers: Vec<_> = (0..churn.workers)
        .map(|worker| {
            let (rooms, errors, joins, leaves) = (
                Arc::clone(&rooms),
                Arc::clone(&errors),
                Arc::clone(&joins),
                Arc::clone(&leaves),
            );
            tokio::spawn(async move {
                let mut connection = Connection::new(server);
                let mut latency = report::latency_histogram();
                let mut round = worker;
                while Instant::now() < deadline {
                    let room = &rooms[round % rooms.len()];
                    round += churn.workers;
                    let begun = Instant::now();
                    let peer = match http::join(&mut connection, &room.name).await {
                        Ok(peer) => peer,
                        Err(failure) => {
                            errors.record(&failure);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = latency.record((begun.elapsed().as_micros() as u64).max(1));
                    joins.fetch_add(1, Ordering::Relaxed);
                    room.changes.fetch_add(1, Ordering::Relaxed);
                    let begun = Instant::now();
                    match http::leave(&mut connection, &room.name, &peer).await {
                        Ok(()) => {
                            let _ = latency.record((begun.elapsed().as_micros() as u64).max(1));
                            leaves.fetch_add(1, Ordering::Relaxed);
                            room.changes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(failure) => errors.record(&failure),
                    }
                }
                latency
            })
        })
        .collect();
    let mut latency: Histogram<u64> = report::latency_histogram();
    for worker in workers {
        let histogram = worker.await.map_err(|error| error.to_string())?;
        latency.add(histogram).map_err(|error| error.to_string())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();

    let drain = Instant::now();
    while rooms
        .iter()
        .any(|room| room.seen.load(Ordering::Relaxed) < room.changes.load(Ordering::Relaxed))
        && drain.elapsed() < DRAIN
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    for (index, (observer, task)) in observers.into_iter().enumerate() {
        task.await.map_err(|error| error.to_string())?;
        let room = &rooms[index];
        delivery.tally(
            room.changes.load(Ordering::Relaxed),
            room.seen.load(Ordering::Relaxed),
        );
        if let Err(failure) = http::leave(&mut Connection::new(server), &room.name, &observer).await
        {
            errors.record(&failure);
        }
    }

    let settings = json!({
        "rooms": churn.rooms,
        "workers": churn.workers,
        "duration_s": churn.duration.as_secs_f64(),
        "threads": options.threads,
        "latency": "one join or leave request",
    });
    let mut report = Report::new("churn", settings, &delivery, &errors);
    let (joins, leaves) = (
        joins.load(Ordering::Relaxed),
        leaves.load(Ordering::Relaxed),
    );
    report.figure(
        "joins_plus_leaves_per_s",
        ((joins + leaves) as f64 / seconds).round(),
        "ops/s",
    );
    report.figure("joins", joins, "");
    report.figure("leaves", leaves, "");
    report.latency(latency);
    Ok(report)
}

/// Counts the `join` and `leave` events one room's observer sees, checking their ids.
async fn observe(
    mut events: http::Events,
    rooms: Arc<Vec<Room>>,
    index: usize,
    delivery: Arc<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ids = IdCheck::default();
    loop {
        let Some(event) = crate::unless_stopped(&mut stop, events.next()).await else {
            break;
        };
        match event {
            Some(Ok(event)) if event.event == "join" || event.event == "leave" => {
                if let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(&event.data) {
                    ids.see(envelope.id, &delivery);
                    rooms[index].seen.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
}
