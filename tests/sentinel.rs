//! Redis Sentinel end to end (issue #18): two signpost instances on one Sentinel set-up
//! (`tests/common/redis_ha.rs`: a master, a replica, three sentinels), one room, a sender on
//! instance A at a fixed rate and a reader on instance B checking every id, through a planned
//! `SENTINEL FAILOVER` and through a SIGKILL of the master followed by its restart.
//!
//! The rule each flow is held to: every answer that is not a 202 is a `503` with `Retry-After`
//! that took under a second; sends succeed again within [`RECOVERY`] of the fault; every
//! message answered 202 reaches the reader exactly once with gapless ids, or the reader was
//! told (`reset` on its poll); and afterwards a send through each instance succeeds (no
//! instance stuck on the old master). Also: the password and TLS variants connect and relay.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_ha::{self, Sentinels, DETECTION};
use common::{answer, Answer, Peer, Server};
use serde_json::{json, Value};
use tokio::sync::watch;

/// How soon after a fault sends must succeed again: Sentinel's detection time (for a SIGKILL),
/// its election and the switch, plus a few seconds for a loaded 2-core machine.
fn recovery() -> Duration {
    DETECTION + Duration::from_secs(6)
}

/// The slowest a refused answer may be: a failover must give fast 503s, never a hang.
const FAST: Duration = Duration::from_secs(1);

/// The sender's period: 50 messages a second.
const PERIOD: Duration = Duration::from_millis(20);

/// How long a wait for the flow to reach a point may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(40);

/// The signpost settings for an instance on `set_up`, keys under `prefix`.
fn settings(set_up: &Sentinels, prefix: &str) -> Value {
    let urls: Vec<String> = match set_up.password() {
        // The data nodes' password goes in the sentinels' URLs (README, "Several instances").
        Some(password) => set_up
            .urls()
            .iter()
            .map(|url| url.replacen("://", &format!("://:{password}@"), 1))
            .collect(),
        None => set_up.urls(),
    };
    let mut settings = json!({
        "redis_sentinels": urls,
        "redis_sentinel_master": set_up.master_name(),
        "redis_prefix": prefix,
        // The flow sends far beyond a person's rate, and its sender never listens.
        "send_rate_per_sec": 1000.0,
        "send_burst": 1000.0,
        "peer_timeout_secs": 300.0,
    });
    if let Some(tls) = set_up.tls() {
        settings["redis_tls_ca_file"] = json!(tls.ca);
    }
    settings
}

/// Two instances on `set_up`, sharing their keys.
async fn two_instances(set_up: &Sentinels) -> (Server, Server) {
    let prefix = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
    let a = Server::with(settings(set_up, &prefix)).await;
    let b = Server::with(settings(set_up, &prefix)).await;
    (a, b)
}

/// Joins `room` on `server` as `name`, once the instance has found the master.
async fn join(server: &Server, room: &str, name: &str) -> Peer {
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

fn send(from: &Peer, to: &Peer, n: u64) -> reqwest::RequestBuilder {
    from.client
        .post(from.url(&format!("/api/rooms/{}/messages", from.room)))
        .bearer_auth(&from.token)
        .json(&json!({"type": "tick", "to": to.id, "data": {"n": n}}))
}

/// One send of the flow.
struct Sent {
    n: u64,
    at: Instant,
    answer: Answer,
}

/// What the reader saw: every message's id and tick number, and how many resets.
#[derive(Default)]
struct Received {
    ids: Vec<u64>,
    ticks: Vec<u64>,
    resets: usize,
}

/// A sender on one instance and a reader on the other, running until [`Flow::finish`].
struct Flow {
    sent: Arc<Mutex<Vec<Sent>>>,
    received: Arc<Mutex<Received>>,
    stop_sending: watch::Sender<bool>,
    stop_reading: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flow {
    fn start(sender: Peer, reader: Peer) -> Flow {
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
    async fn accepted_after(&self, since: Instant, count: usize, what: &str) {
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
    async fn finish(mut self) -> (Vec<Sent>, Received) {
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

fn clone_peer(peer: &Peer) -> Peer {
    Peer {
        id: peer.id.clone(),
        token: peer.token.clone(),
        room: peer.room.clone(),
        base: peer.base.clone(),
        client: peer.client.clone(),
        joined: peer.joined.clone(),
    }
}

/// Holds a flow to the rule (the module's doc), the fault having started at `fault`.
fn check(what: &str, fault: Instant, sent: &[Sent], received: &Received) {
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
            recovered < recovery(),
            "{what}: sends still refused {recovered:?} after the fault (bound {:?})",
            recovery()
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
async fn both_instances_send(alice: &Peer, bob: &Peer) {
    for (from, to) in [(alice, bob), (bob, alice)] {
        let answer = answer(send(from, to, 0)).await;
        assert_eq!(
            answer.status, 202,
            "a send through {}: {}",
            from.base, answer.body
        );
    }
}

/// Runs blocking set-up work (a failover, a kill, a restart) off the runtime, so that the flow
/// keeps going meanwhile.
async fn blocking<T: Send + 'static>(
    set_up: &Arc<Mutex<Sentinels>>,
    work: impl FnOnce(&mut Sentinels) -> T + Send + 'static,
) -> T {
    let set_up = Arc::clone(set_up);
    tokio::task::spawn_blocking(move || work(&mut set_up.lock().unwrap()))
        .await
        .expect("the set-up's work ran")
}

/// A planned `SENTINEL FAILOVER` under a steady flow: only fast 503s, sends back within
/// [`recovery`], nothing accepted lost silently, and both instances on the new master after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn a_planned_failover_gives_fast_503s_and_loses_nothing_silently() {
    if !common::external::can_run("planned failover", redis_ha::available()) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(Sentinels::start).await.unwrap();
    let (a, b) = two_instances(&set_up).await;
    let set_up = Arc::new(Mutex::new(set_up));
    let alice = join(&a, "failover", "alice").await;
    let bob = join(&b, "failover", "bob").await;
    let flow = Flow::start(clone_peer(&alice), clone_peer(&bob));
    flow.accepted_after(Instant::now(), 20, "sent before the failover")
        .await;

    let fault = Instant::now();
    blocking(&set_up, |set_up| set_up.failover()).await;
    flow.accepted_after(Instant::now(), 50, "sent after the failover")
        .await;
    let (sent, received) = flow.finish().await;
    check("planned failover", fault, &sent, &received);
    both_instances_send(&alice, &bob).await;
}

/// A SIGKILL of the master under a steady flow, then its restart: only fast 503s, sends back
/// within [`recovery`] of the kill, nothing accepted lost silently; the old master comes back
/// as a replica and both instances still send (neither went back to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn a_killed_master_gives_fast_503s_and_its_restart_strands_no_instance() {
    if !common::external::can_run("killed master", redis_ha::available()) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(Sentinels::start).await.unwrap();
    let (a, b) = two_instances(&set_up).await;
    let set_up = Arc::new(Mutex::new(set_up));
    let alice = join(&a, "kill", "alice").await;
    let bob = join(&b, "kill", "bob").await;
    let flow = Flow::start(clone_peer(&alice), clone_peer(&bob));
    flow.accepted_after(Instant::now(), 20, "sent before the kill")
        .await;

    let fault = Instant::now();
    let old = blocking(&set_up, |set_up| {
        let old = set_up.kill_master();
        set_up.wait_for_new_master(old, redis_ha::FAILOVER_DEADLINE);
        old
    })
    .await;
    flow.accepted_after(Instant::now(), 50, "sent after the kill")
        .await;
    blocking(&set_up, move |set_up| set_up.restart(old)).await;
    flow.accepted_after(Instant::now(), 50, "sent after the restart")
        .await;
    let (sent, received) = flow.finish().await;
    check("killed master", fault, &sent, &received);
    let role = blocking(&set_up, move |set_up| set_up.data_cli(old, &["role"])).await;
    assert!(
        role.starts_with("slave"),
        "the old master is a replica: {role}"
    );
    both_instances_send(&alice, &bob).await;
}

/// With a password on the data nodes (given in the sentinels' URLs' userinfo), two instances
/// find the master and relay; a sentinel that is down, listed first, is passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn a_password_in_the_sentinel_urls_reaches_the_data_nodes() {
    if !common::external::can_run("sentinel password", redis_ha::available()) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(|| Sentinels::start_with_password("s3cret-pw"))
        .await
        .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a port")
        .port();
    let prefix = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
    let mut settings = settings(&set_up, &prefix);
    let mut urls = vec![json!(format!("redis://:s3cret-pw@127.0.0.1:{closed}"))];
    urls.extend(
        settings["redis_sentinels"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    settings["redis_sentinels"] = json!(urls);
    let a = Server::with(settings.clone()).await;
    let b = Server::with(settings).await;
    relay_between(&a, &b).await;
}

/// TLS-only sentinels and data nodes (`rediss://` URLs, our own CA in `redis_tls_ca_file`,
/// and a password): two instances find the master and relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "redis-tls"),
    ignore = "needs the redis-tls feature: cargo test --features redis-tls --test sentinel"
)]
#[cfg_attr(
    all(
        feature = "redis-tls",
        any(signpost_missing = "redis", signpost_missing = "openssl")
    ),
    ignore = "needs redis-server and openssl: apt-get install redis-server openssl (README.md, Prerequisites)"
)]
async fn tls_sentinels_and_data_nodes_relay() {
    let available =
        redis_ha::available().and_then(|()| common::external::programs(&["openssl"], "openssl"));
    if !common::external::can_run("sentinel tls", available) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(|| {
        let dir = std::env::temp_dir().join(format!("signpost-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        Sentinels::start_tls(
            common::redis_ha::TlsFiles::generate(&dir),
            Some("s3cret-pw"),
        )
    })
    .await
    .unwrap();
    relays(&set_up).await;
}

/// Two instances on `set_up` relay a message from one to the other.
async fn relays(set_up: &Sentinels) {
    let (a, b) = two_instances(set_up).await;
    relay_between(&a, &b).await;
}

/// A message sent through `a` reaches its recipient on `b`, and one the other way.
async fn relay_between(a: &Server, b: &Server) {
    let alice = join(a, "secured", "alice").await;
    let bob = join(b, "secured", "bob").await;
    both_instances_send(&alice, &bob).await;
    let (status, body) = bob.poll(0, 5.0).await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["type"], "tick", "{body}");
}

/// With `redis_wait_replicas = 1`, a send is answered 202 while the replica keeps up, and a
/// fast 503 with `Retry-After` once no replica acknowledges (the replica detached by hand);
/// once it is back in sync, sends are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn wait_replicas_answers_202_only_once_a_replica_has_the_message() {
    if !common::external::can_run("wait replicas", redis_ha::available()) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(Sentinels::start).await.unwrap();
    let prefix = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
    let mut settings = settings(&set_up, &prefix);
    settings["redis_wait_replicas"] = json!(1);
    let a = Server::with(settings.clone()).await;
    let b = Server::with(settings).await;
    let alice = join(&a, "wait", "alice").await;
    let bob = join(&b, "wait", "bob").await;
    both_instances_send(&alice, &bob).await;

    let master = set_up.master_port();
    let replica = *set_up
        .data_ports()
        .iter()
        .find(|port| **port != master)
        .expect("a replica");
    let set_up = Arc::new(Mutex::new(set_up));
    blocking(&set_up, move |set_up| {
        set_up.data_cli(replica, &["replicaof", "no", "one"])
    })
    .await;
    let refused = answer(send(&alice, &bob, 1)).await;
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (503, Some("store_unavailable")),
        "{}",
        refused.body
    );
    assert!(
        refused.retry_after.is_some() && refused.took < FAST,
        "a fast 503 with Retry-After"
    );

    blocking(&set_up, move |set_up| {
        set_up.data_cli(replica, &["replicaof", "127.0.0.1", &master.to_string()]);
        redis_ha::wait_for(redis_ha::FAILOVER_DEADLINE, "the replica to resync", || {
            let info = set_up.data_cli(master, &["info", "replication"]);
            (redis_ha::info_field(&info, "connected_slaves").as_deref() == Some("1")
                && info.contains("state=online"))
            .then_some(())
        })
    })
    .await;
    both_instances_send(&alice, &bob).await;
}

/// After a planned failover, a reader's stream on one instance is woken by a send through the
/// other within a couple of seconds: the wake-up connection moved to the new master with the
/// commands' one (the old master keeps its subscribers connected, deaf, for ~10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn wake_ups_follow_the_master_after_a_planned_failover() {
    if !common::external::can_run("wake-ups follow", redis_ha::available()) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(Sentinels::start).await.unwrap();
    let (a, b) = two_instances(&set_up).await;
    let set_up = Arc::new(Mutex::new(set_up));
    let alice = join(&a, "wake", "alice").await;
    let bob = join(&b, "wake", "bob").await;
    let (old, sentinel, name) = {
        let set_up = set_up.lock().unwrap();
        let name = set_up.master_name().to_owned();
        (set_up.master_port(), set_up.sentinel_ports()[0], name)
    };
    // Not awaited yet: `failover` returns once the old master is a replica (~10 s later), when
    // it has closed every connection anyway; the point is the seconds before that.
    let failover = {
        let set_up = Arc::clone(&set_up);
        tokio::task::spawn_blocking(move || set_up.lock().unwrap().failover())
    };

    // The sentinels name the new master, sends are accepted again, and bob's stream opens.
    let started = Instant::now();
    loop {
        let name = name.clone();
        let named = tokio::task::spawn_blocking(move || {
            redis_ha::cli(sentinel, &["sentinel", "get-master-addr-by-name", &name])
        });
        let named = named.await.unwrap();
        let moved = named.lines().nth(1).map(str::trim) != Some(&old.to_string());
        if moved && answer(send(&alice, &bob, 1)).await.status == 202 {
            break;
        }
        assert!(started.elapsed() < recovery(), "sends never came back");
        tokio::time::sleep(PERIOD).await;
    }
    let mut events = bob.events(None).await;
    let tick = |event: &eventsource_stream::Event| -> Option<u64> {
        (event.event == "tick")
            .then(|| serde_json::from_str::<Value>(&event.data).ok())
            .flatten()
            .and_then(|envelope| envelope["data"]["n"].as_u64())
    };
    while tick(&events.next().await) != Some(1) {}

    let sent = Instant::now();
    assert_eq!(answer(send(&alice, &bob, 2)).await.status, 202);
    let woken = tokio::time::timeout(Duration::from_secs(3), async {
        while tick(&events.next().await) != Some(2) {}
    })
    .await;
    assert!(
        woken.is_ok(),
        "the reader was not woken within 3 s of the send (waited {:?})",
        sent.elapsed()
    );
    failover.await.expect("the failover completed");
}
