//! A steady flow through a store's fault, held to one rule (tests/sentinel.rs and
//! tests/redis_cluster.rs): a sender on one instance at a fixed rate and a reader on another
//! checking every id. Every answer that is not a 202 is a `503` with `Retry-After` that took
//! under a second; sends succeed again within a bound of the fault; every message answered 202
//! reaches the reader exactly once with gapless ids, or the reader was told (`reset` on its
//! poll).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use super::{answer, Answer, Peer, Server};

/// The slowest a refused answer may be: a failover must give fast 503s, never a hang.
pub const FAST: Duration = Duration::from_secs(1);

/// The sender's period: 50 messages a second.
pub const PERIOD: Duration = Duration::from_millis(20);

/// How long a wait for the flow to reach a point may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(40);

/// Runs blocking work on a set-up (a failover, a kill, a restart, a reshard) off the runtime, so
/// that the flow keeps going meanwhile.
pub async fn blocking<S: Send + 'static, T: Send + 'static>(
    set_up: &Arc<Mutex<S>>,
    work: impl FnOnce(&mut S) -> T + Send + 'static,
) -> T {
    let set_up = Arc::clone(set_up);
    tokio::task::spawn_blocking(move || work(&mut set_up.lock().unwrap()))
        .await
        .expect("the set-up's work ran")
}

/// Joins `room` on `server` as `name`, once the instance has found the master.
pub async fn join(server: &Server, room: &str, name: &str) -> Peer {
    let started = Instant::now();
    loop {
        let ready = server
            .client
            .get(server.url("/readyz"))
            .send()
            .await
            .map(|response| response.status().as_u16());
        if matches!(ready, Ok(200)) {
            return server.join(room, name).await;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{name}'s instance never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn send(from: &Peer, to: &Peer, n: u64) -> reqwest::RequestBuilder {
    from.client
        .post(from.url(&format!("/api/rooms/{}/messages", from.room)))
        .bearer_auth(&from.token)
        .json(&json!({"type": "tick", "to": to.id, "data": {"n": n}}))
}

/// One send of the flow.
pub struct Sent {
    pub n: u64,
    pub at: Instant,
    pub answer: Answer,
}

/// What the reader saw: every message's id and tick number, and how many resets.
#[derive(Default)]
pub struct Received {
    pub ids: Vec<u64>,
    pub ticks: Vec<u64>,
    pub resets: usize,
}

/// A sender on one instance and a reader on the other, running until [`Flow::finish`].
pub struct Flow {
    sent: Arc<Mutex<Vec<Sent>>>,
    received: Arc<Mutex<Received>>,
    stop_sending: watch::Sender<bool>,
    stop_reading: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flow {
    pub fn start(sender: Peer, reader: Peer) -> Flow {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(Received::default()));
        let (stop_sending, mut sending) = watch::channel(false);
        let (stop_reading, mut reading) = watch::channel(false);
        let to = Peer {
            client: sender.client.clone(),
            ..clone_peer(&reader)
        };
        let log = Arc::clone(&sent);
        let send_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            for n in 1.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = sending.changed() => return,
                }
                let at = Instant::now();
                let answer = answer(send(&sender, &to, n)).await;
                log.lock().unwrap().push(Sent { n, at, answer });
            }
        });
        let seen = Arc::clone(&received);
        let read_task = tokio::spawn(async move {
            let mut after = 0;
            loop {
                let poll = reader
                    .client
                    .get(reader.url(&format!(
                        "{}/messages?after={after}&wait=0.5",
                        reader.peer_path()
                    )))
                    .bearer_auth(&reader.token);
                let polled = tokio::select! {
                    polled = answer(poll) => polled,
                    _ = reading.changed() => return,
                };
                if polled.status != 200 {
                    // The store is switching: a 503, asked again shortly.
                    assert_eq!(polled.status, 503, "a poll refused: {}", polled.body);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let mut seen = seen.lock().unwrap();
                if polled.body["reset"] == json!(true) {
                    seen.resets += 1;
                }
                for message in polled.body["messages"].as_array().into_iter().flatten() {
                    seen.ids.push(message["id"].as_u64().expect("an id"));
                    if message["type"] == "tick" {
                        seen.ticks
                            .push(message["data"]["n"].as_u64().expect("a tick"));
                    }
                }
                after = polled.body["last_id"].as_u64().unwrap_or(after);
            }
        });
        Flow {
            sent,
            received,
            stop_sending,
            stop_reading,
            tasks: vec![send_task, read_task],
        }
    }

    /// Waits until `count` sends made after `since` were accepted.
    pub async fn accepted_after(&self, since: Instant, count: usize, what: &str) {
        let started = Instant::now();
        loop {
            let accepted = self
                .sent
                .lock()
                .unwrap()
                .iter()
                .filter(|sent| sent.at >= since && sent.answer.status == 202)
                .count();
            if accepted >= count {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "never {what}");
            tokio::time::sleep(PERIOD).await;
        }
    }

    /// Stops sending, waits until the reader has every accepted message (or a reset told it
    /// some are gone, or [`DEADLINE`] passed), and returns what was sent and received.
    pub async fn finish(mut self) -> (Vec<Sent>, Received) {
        let _ = self.stop_sending.send(true);
        let sender = self.tasks.remove(0);
        sender.await.expect("the sender ran");
        let accepted: HashSet<u64> = self
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|sent| sent.answer.status == 202)
            .map(|sent| sent.n)
            .collect();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let caught_up = {
                let received = self.received.lock().unwrap();
                let ticks: HashSet<u64> = received.ticks.iter().copied().collect();
                received.resets > 0 || accepted.is_subset(&ticks)
            };
            if caught_up {
                break;
            }
            tokio::time::sleep(PERIOD).await;
        }
        let _ = self.stop_reading.send(true);
        for task in self.tasks {
            task.await.expect("the reader ran");
        }
        let sent = std::mem::take(&mut *self.sent.lock().unwrap());
        let received = std::mem::take(&mut *self.received.lock().unwrap());
        (sent, received)
    }
}

pub fn clone_peer(peer: &Peer) -> Peer {
    Peer {
        id: peer.id.clone(),
        token: peer.token.clone(),
        room: peer.room.clone(),
        base: peer.base.clone(),
        client: peer.client.clone(),
        joined: peer.joined.clone(),
    }
}

/// Holds a flow to the rule (the module's doc), the fault having started at `fault` and sends
/// due back within `recovery` of it.
pub fn check(what: &str, fault: Instant, recovery: Duration, sent: &[Sent], received: &Received) {
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.answer.status != 202).collect();
    for sent in &refused {
        let answer = &sent.answer;
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (503, Some("store_unavailable")),
            "{what}: send {} refused otherwise: {}",
            sent.n,
            answer.body
        );
        assert!(
            answer.retry_after.is_some(),
            "{what}: a 503 without Retry-After"
        );
        assert!(
            answer.took < FAST,
            "{what}: a 503 took {:?}, not a fast answer",
            answer.took
        );
    }
    if let Some(last) = refused.last() {
        let recovered = last.at.saturating_duration_since(fault);
        assert!(
            recovered < recovery,
            "{what}: sends still refused {recovered:?} after the fault (bound {:?})",
            recovery
        );
    }
    let mut unique = HashSet::new();
    for tick in &received.ticks {
        assert!(unique.insert(*tick), "{what}: tick {tick} delivered twice");
    }
    assert!(
        received.ids.windows(2).all(|pair| pair[0] < pair[1]),
        "{what}: ids went back: {:?}",
        received.ids
    );
    if received.resets == 0 {
        assert!(
            received.ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{what}: a gap in the ids without a reset: {:?}",
            received.ids
        );
        let lost: Vec<u64> = sent
            .iter()
            .filter(|sent| sent.answer.status == 202 && !unique.contains(&sent.n))
            .map(|sent| sent.n)
            .collect();
        assert!(
            lost.is_empty(),
            "{what}: accepted but never delivered, and no reset: {lost:?}"
        );
    }
    eprintln!(
        "{what}: {} sent, {} refused (slowest {:?}), last refusal {:?} after the fault, {} delivered, {} resets",
        sent.len(),
        refused.len(),
        refused.iter().map(|s| s.answer.took).max().unwrap_or_default(),
        refused.last().map(|s| s.at.saturating_duration_since(fault)),
        received.ticks.len(),
        received.resets
    );
}

/// A send through each instance succeeds: neither stayed on the old master.
pub async fn both_instances_send(alice: &Peer, bob: &Peer) {
    for (from, to) in [(alice, bob), (bob, alice)] {
        let answer = answer(send(from, to, 0)).await;
        assert_eq!(
            answer.status, 202,
            "a send through {}: {}",
            from.base, answer.body
        );
    }
}
