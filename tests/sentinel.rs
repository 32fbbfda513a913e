//! Redis Sentinel end to end (issue #18): two signpost instances on one Sentinel set-up
//! (`tests/common/redis_ha.rs`: a master, a replica, three sentinels), one room, a sender on
//! instance A at a fixed rate and a reader on instance B checking every id, through a planned
//! `SENTINEL FAILOVER` and through a SIGKILL of the master followed by its restart.
//!
//! The rule each flow is held to: every answer that is not a 202 is a `503` with `Retry-After`
//! that took under a second; sends succeed again within [`RECOVERY`] of the fault; every
//! message answered 202 reaches the reader exactly once with gapless ids, or the reader was
//! told (`reset` on its poll); and afterwards a send through each instance succeeds (no
//! instance stuck on the old master). Also: a master with `min-replicas-to-write 1` whose
//! replica dies, and the password and TLS variants connect and relay.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::flow::{
    blocking, both_instances_send, check, clone_peer, join, send, Flow, FAST, PERIOD,
};
use common::redis_ha::{self, Sentinels, DETECTION};
use common::{answer, Server};
use serde_json::{json, Value};

/// How soon after a fault sends must succeed again: Sentinel's detection time (for a SIGKILL),
/// its election and the switch, plus a few seconds for a loaded 2-core machine.
fn recovery() -> Duration {
    DETECTION + Duration::from_secs(6)
}

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
    check("planned failover", fault, recovery(), &sent, &received);
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
    check("killed master", fault, recovery(), &sent, &received);
    let role = blocking(&set_up, move |set_up| set_up.data_cli(old, &["role"])).await;
    assert!(
        role.starts_with("slave"),
        "the old master is a replica: {role}"
    );
    both_instances_send(&alice, &bob).await;
}

/// `min-replicas-to-write 1` on the master, as README ("Redis Sentinel") advises: when its only
/// replica dies, the master refuses writes (`NOREPLICAS`); sends are then answered fast 503s with
/// `Retry-After`, never a hang, and are accepted again once the replica is back in sync, with
/// nothing accepted lost. No failover happens: the instances stay on the same master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn a_master_without_its_replica_refuses_writes_until_it_is_back() {
    if !common::external::can_run("min-replicas-to-write", redis_ha::available()) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(Sentinels::start).await.unwrap();
    let master = set_up.master_port();
    for setting in [
        ["min-replicas-to-write", "1"],
        ["min-replicas-max-lag", "2"],
    ] {
        let answer = set_up.data_cli(master, &["config", "set", setting[0], setting[1]]);
        assert_eq!(answer, "OK", "{setting:?}");
    }
    let (a, b) = two_instances(&set_up).await;
    let set_up = Arc::new(Mutex::new(set_up));
    let alice = join(&a, "lonely", "alice").await;
    let bob = join(&b, "lonely", "bob").await;
    let flow = Flow::start(clone_peer(&alice), clone_peer(&bob));
    flow.accepted_after(Instant::now(), 20, "sent with the replica")
        .await;

    let replica = blocking(&set_up, move |set_up| {
        let replica = set_up.kill_replica();
        // The master counts no good replica any more: writes are refused from here on.
        redis_ha::wait_for(
            redis_ha::FAILOVER_DEADLINE,
            "the master to count no good replica",
            || {
                let info = set_up.data_cli(master, &["info", "replication"]);
                (redis_ha::info_field(&info, "min_slaves_good_slaves").as_deref() == Some("0"))
                    .then_some(())
            },
        );
        replica
    })
    .await;
    // Refused for a while, as a client sees it: long enough for the flow's sends to meet it.
    let refused_from = Instant::now();
    // Ticks of their own, far above the flow's, so that none repeats one of its ticks.
    let mut tick = 1_000_000;
    let refusal = loop {
        tick += 1;
        let answer = common::answer(send(&alice, &bob, tick)).await;
        if answer.status != 202 {
            break answer;
        }
        assert!(
            refused_from.elapsed() < recovery(),
            "the master without its replica still takes writes"
        );
        tokio::time::sleep(PERIOD).await;
    };
    assert_eq!(
        (refusal.status, refusal.body["error"].as_str()),
        (503, Some("store_unavailable")),
        "{}",
        refusal.body
    );
    assert!(refusal.retry_after.is_some() && refusal.took < FAST);

    let back = Instant::now();
    blocking(&set_up, move |set_up| set_up.restart_replica(replica)).await;
    flow.accepted_after(Instant::now(), 50, "sent after the replica's return")
        .await;
    let (sent, received) = flow.finish().await;
    assert!(
        sent.iter().any(|sent| sent.answer.status == 503),
        "the flow met the refusals"
    );
    check("replica gone and back", back, recovery(), &sent, &received);
    assert_eq!(
        blocking(&set_up, |set_up| set_up.master_port()).await,
        master,
        "no failover: the same master throughout"
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

/// Sentinels that ask a password of their own (`requirepass`): with `redis_sentinel_password`
/// two instances find the master and relay; without it no sentinel answers, and the store is
/// not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn sentinels_with_a_password_of_their_own() {
    if !common::external::can_run("sentinel's own password", redis_ha::available()) {
        return;
    }
    let set_up = tokio::task::spawn_blocking(|| {
        Sentinels::start_with_sentinel_password("data-pw", "sentinel-pw")
    })
    .await
    .unwrap();
    let prefix = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
    let without = settings(&set_up, &prefix);
    let refused = Server::with(without.clone()).await;
    assert_eq!(
        refused.get_json("/readyz").await.0,
        503,
        "no sentinel answers without its password"
    );

    let mut with = without;
    with["redis_sentinel_password"] = json!("sentinel-pw");
    let a = Server::with(with.clone()).await;
    let b = Server::with(with).await;
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

    // The sentinels name the new master, sends through alice's instance are accepted again,
    // and bob's stream opens on the other instance, which may still be switching: until it
    // has, its answer is the fast 503 with Retry-After.
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
    let mut events = loop {
        let asked = Instant::now();
        let response = bob.events_response(None).await;
        if response.status() == 200 {
            let mut events = common::Events::from_response(response);
            assert_eq!(events.next().await.event, "ready", "first event is ready");
            break events;
        }
        assert_eq!(
            response.status(),
            503,
            "bob's stream while his instance switches"
        );
        assert!(
            response.headers().contains_key("retry-after"),
            "a 503 tells when to retry"
        );
        assert!(
            asked.elapsed() < FAST,
            "a 503 is fast: {:?}",
            asked.elapsed()
        );
        assert!(started.elapsed() < recovery(), "bob's stream never opened");
        tokio::time::sleep(PERIOD).await;
    };
    let tick = |event: &eventsource_stream::Event| -> Option<u64> {
        (event.event == "tick")
            .then(|| serde_json::from_str::<Value>(&event.data).ok())
            .flatten()
            .and_then(|envelope| envelope["data"]["n"].as_u64())
    };
    let first = loop {
        let event = events.next().await;
        if tick(&event) == Some(1) {
            break event;
        }
    };
    // The new master is another history: the mailbox was sealed, to a generation of the new
    // master's config epoch (lua/room.lua, "Seal"), which the instances told it.
    let asked = name.clone();
    let master = tokio::task::spawn_blocking(move || {
        redis_ha::cli(sentinel, &["sentinel", "master", &asked])
    })
    .await
    .unwrap();
    let lines: Vec<&str> = master.lines().map(str::trim).collect();
    let config_epoch: u64 = lines
        .iter()
        .position(|line| *line == "config-epoch")
        .and_then(|at| lines.get(at + 1))
        .and_then(|epoch| epoch.parse().ok())
        .unwrap_or_else(|| panic!("SENTINEL MASTER tells the config-epoch: {master}"));
    assert!(config_epoch >= 1, "a failover took a new epoch: {master}");
    let id: u64 = first.id.parse().expect("an event id");
    assert_eq!(
        id >> 32,
        config_epoch * 64,
        "the sealed mailbox's generation is its new master's config epoch × 64 (id {id})"
    );

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
