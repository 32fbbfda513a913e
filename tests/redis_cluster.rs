//! Redis Cluster end to end (issue #18): two signpost instances on one Redis Cluster
//! (`tests/common/redis_ha.rs`: 3 masters, 3 replicas, `cluster-node-timeout` 1 s), one room, a
//! sender on instance A at a fixed rate and a reader on instance B checking every id
//! (`tests/common/flow.rs`), through a SIGKILL of the master that owns the room's slot (then its
//! restart), and through `redis-cli --cluster reshard` of that slot under load. Also: a reader's
//! wake-ups follow the room's slot when it migrates (the redis crate drops a sharded
//! subscription whose slot moved; the store subscribes again).
//!
//! The rule each flow is held to is the module's doc of `tests/common/flow.rs`, with sends
//! back within [`recovery`] of the fault; afterwards a send through each instance succeeds.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::flow::{blocking, both_instances_send, check, clone_peer, join, send, Flow};
use common::redis_ha::{self, Cluster, DETECTION};
use common::{answer, Server};
use serde_json::{json, Value};

/// How soon after a fault sends must succeed again: the cluster's node timeout (the failure
/// detection), the replica's election, the client's slot refresh, plus a few seconds for a
/// loaded 2-core machine.
fn recovery() -> Duration {
    DETECTION + Duration::from_secs(6)
}

/// The signpost settings for an instance on `cluster`, keys under `prefix`.
fn settings(cluster: &Cluster, prefix: &str) -> Value {
    let mut settings = json!({
        "redis_cluster_nodes": cluster.urls(),
        "redis_prefix": prefix,
        // The flow sends far beyond a person's rate, and its sender never listens.
        "send_rate_per_sec": 1000.0,
        "send_burst": 1000.0,
        "peer_timeout_secs": 300.0,
    });
    if let Some(tls) = cluster.tls() {
        settings["redis_tls_ca_file"] = json!(tls.ca);
    }
    settings
}

/// Two instances on `cluster`, sharing their keys.
async fn two_instances(cluster: &Cluster) -> (Server, Server) {
    let prefix = format!("cluster-{}", uuid::Uuid::new_v4().simple());
    let a = Server::with(settings(cluster, &prefix)).await;
    let b = Server::with(settings(cluster, &prefix)).await;
    (a, b)
}

/// Redis Cluster's key slot of `text` (CRC16/XMODEM mod 16384), as `CLUSTER KEYSLOT` computes it
/// for a key whose hash tag is `text`.
fn slot_of(text: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in text.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A room name whose slot is the first of the range a master serves (`redis-cli --cluster
/// create` gives each master one range), so that `reshard … --cluster-slots 1` moves it: the
/// name, its slot.
fn room_on_a_range_start(cluster: &Cluster, stem: &str) -> (String, u16) {
    let starts: Vec<u16> = cluster
        .nodes_seen_by(cluster.running()[0])
        .into_iter()
        .filter(|node| node.master)
        .flat_map(|node| node.slots.into_iter().map(|(start, _)| start))
        .collect();
    (0..)
        .map(|n| format!("{stem}-{n}"))
        .find_map(|room| {
            let slot = slot_of(&room);
            starts.contains(&slot).then_some((room, slot))
        })
        .expect("some name falls on a range's start")
}

/// A SIGKILL of the master that owns the busy room's slot under a steady flow, then its
/// restart: only fast 503s, sends back within [`recovery`] of the kill, nothing accepted lost
/// silently (the promoted replica seals the mailbox if it lacks the last writes: a `lost`
/// reset); the old master comes back as a replica and both instances still send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn a_killed_shard_master_gives_fast_503s_and_loses_nothing_silently() {
    if !common::external::can_run("cluster killed master", redis_ha::available()) {
        return;
    }
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (a, b) = two_instances(&cluster).await;
    let cluster = Arc::new(Mutex::new(cluster));
    let room = "busy";
    let alice = join(&a, room, "alice").await;
    let bob = join(&b, room, "bob").await;
    let flow = Flow::start(clone_peer(&alice), clone_peer(&bob));
    flow.accepted_after(Instant::now(), 20, "sent before the kill")
        .await;

    let fault = Instant::now();
    let old = blocking(&cluster, move |cluster| {
        let key = format!("{{{room}}}");
        let slot = cluster.slot_of(&key);
        let old = cluster.kill_master_of(&key);
        cluster.wait_for_promotion(old, slot, redis_ha::FAILOVER_DEADLINE);
        old
    })
    .await;
    flow.accepted_after(Instant::now(), 50, "sent after the kill")
        .await;
    blocking(&cluster, move |cluster| cluster.restart(old)).await;
    flow.accepted_after(Instant::now(), 50, "sent after the restart")
        .await;
    let (sent, received) = flow.finish().await;
    check("killed shard master", fault, recovery(), &sent, &received);
    let role = blocking(&cluster, move |_| redis_ha::cli(old, &["role"])).await;
    assert!(
        role.starts_with("slave"),
        "the old master is a replica: {role}"
    );
    both_instances_send(&alice, &bob).await;
}

/// `redis-cli --cluster reshard` moves the busy room's slot, keys and all, to another master
/// under a steady flow: only fast 503s (MOVED and ASK are followed inside a request), sends
/// never stop for longer than [`recovery`], nothing accepted lost silently, and both instances
/// send through the slot's new owner after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn a_resharded_busy_slot_gives_fast_503s_and_loses_nothing_silently() {
    if !common::external::can_run("cluster reshard", redis_ha::available()) {
        return;
    }
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (room, slot) = room_on_a_range_start(&cluster, "resharded");
    let (a, b) = two_instances(&cluster).await;
    let cluster = Arc::new(Mutex::new(cluster));
    let alice = join(&a, &room, "alice").await;
    let bob = join(&b, &room, "bob").await;
    let flow = Flow::start(clone_peer(&alice), clone_peer(&bob));
    flow.accepted_after(Instant::now(), 20, "sent before the reshard")
        .await;

    let fault = Instant::now();
    let (from, to) = blocking(&cluster, move |cluster| {
        let from = cluster.owner_of(slot).port;
        let to = cluster
            .nodes_seen_by(from)
            .into_iter()
            .find(|node| node.master && node.port != from)
            .expect("another master")
            .port;
        cluster.reshard(from, to, 1);
        (from, to)
    })
    .await;
    let owner = blocking(&cluster, move |cluster| cluster.owner_of(slot).port).await;
    assert_eq!(owner, to, "the reshard moved slot {slot} from {from}");
    flow.accepted_after(Instant::now(), 50, "sent after the reshard")
        .await;
    let (sent, received) = flow.finish().await;
    check("resharded busy slot", fault, recovery(), &sent, &received);
    both_instances_send(&alice, &bob).await;
}

/// After the room's slot migrates to another master, a reader's stream on one instance is
/// woken by a send through the other within a couple of seconds (its heartbeat, which would
/// read anyway, is 15 s away): the cluster dropped the sharded subscription with the slot, and
/// the store subscribed again on the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn wake_ups_follow_a_migrated_slot() {
    if !common::external::can_run("cluster wake-ups follow", redis_ha::available()) {
        return;
    }
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (a, b) = two_instances(&cluster).await;
    let cluster = Arc::new(Mutex::new(cluster));
    let room = "migrating";
    let alice = join(&a, room, "alice").await;
    let bob = join(&b, room, "bob").await;
    let mut events = bob.events(None).await;
    let tick = |event: &eventsource_stream::Event| -> Option<u64> {
        (event.event == "tick")
            .then(|| serde_json::from_str::<Value>(&event.data).ok())
            .flatten()
            .and_then(|envelope| envelope["data"]["n"].as_u64())
    };
    assert_eq!(answer(send(&alice, &bob, 1)).await.status, 202);
    while tick(&events.next().await) != Some(1) {}

    blocking(&cluster, move |cluster| {
        let slot = cluster.slot_of(&format!("{{{room}}}"));
        let from = cluster.owner_of(slot).port;
        let to = cluster
            .nodes_seen_by(from)
            .into_iter()
            .find(|node| node.master && node.port != from)
            .expect("another master")
            .port;
        cluster.migrate_slot(slot, to);
    })
    .await;

    let started = Instant::now();
    let sent = loop {
        let sent = Instant::now();
        if answer(send(&alice, &bob, 2)).await.status == 202 {
            break sent;
        }
        assert!(started.elapsed() < recovery(), "sends never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let woken = tokio::time::timeout(Duration::from_secs(3), async {
        while tick(&events.next().await) != Some(2) {}
    })
    .await;
    assert!(
        woken.is_ok(),
        "the reader was not woken within 3 s of the send (waited {:?})",
        sent.elapsed()
    );
}

/// With `requirepass` on every node (the password in the URLs' userinfo), two instances reach
/// the cluster and relay a message each way, a stream's wake-up included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn a_password_in_the_node_urls_reaches_the_cluster() {
    if !common::external::can_run("cluster password", redis_ha::available()) {
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| Cluster::start_with_password("s3cret-pw"))
        .await
        .unwrap();
    assert!(cluster.urls()[0].starts_with("redis://:s3cret-pw@"));
    relays(&cluster).await;
}

/// A TLS-only cluster (`rediss://` URLs, our own CA in `redis_tls_ca_file`, clients,
/// replication and the cluster bus over TLS) with a password: two instances relay, a stream's
/// wake-up included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "redis-tls"),
    ignore = "needs the redis-tls feature: cargo test --features redis-tls --test redis_cluster"
)]
#[cfg_attr(
    all(
        feature = "redis-tls",
        any(signpost_missing = "redis", signpost_missing = "openssl")
    ),
    ignore = "needs redis-server and openssl: apt-get install redis-server openssl (README.md, Prerequisites)"
)]
async fn a_tls_cluster_relays() {
    let available =
        redis_ha::available().and_then(|()| common::external::programs(&["openssl"], "openssl"));
    if !common::external::can_run("cluster tls", available) {
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| {
        let dir = std::env::temp_dir().join(format!("signpost-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        Cluster::start_tls(redis_ha::TlsFiles::generate(&dir), Some("s3cret-pw"))
    })
    .await
    .unwrap();
    assert!(cluster.urls()[0].starts_with("rediss://:s3cret-pw@"));
    relays(&cluster).await;
}

/// Two instances on `cluster` relay a message each way, and the recipient's stream is woken.
async fn relays(cluster: &Cluster) {
    let (a, b) = two_instances(cluster).await;
    let alice = join(&a, "secured", "alice").await;
    let bob = join(&b, "secured", "bob").await;
    let mut events = bob.events(None).await;
    both_instances_send(&alice, &bob).await;
    let woken = tokio::time::timeout(Duration::from_secs(3), async {
        while events.next().await.event != "tick" {}
    })
    .await;
    assert!(woken.is_ok(), "bob's stream was not woken by the tick");
    let (status, body) = alice.poll(0, 5.0).await;
    assert_eq!(status, 200);
    let kinds: Vec<&Value> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|message| &message["type"])
        .collect();
    assert_eq!(kinds, [&json!("join"), &json!("tick")], "{body}");
}

/// With no node of the cluster answering (every seed node a socket that accepts connections
/// and never replies), requests that need the store answer `503 store_unavailable` with
/// `Retry-After`, each fast, even when many arrive at once while the first connection is being
/// tried (each waits for it within a bound, not in a queue behind the others' attempts); and
/// `/readyz` says not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_gives_fast_503s() {
    let silent: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a port"))
        .collect();
    let urls: Vec<String> = silent
        .iter()
        .map(|listener| format!("redis://{}", listener.local_addr().expect("an address")))
        .collect();
    let server = Server::with(json!({
        "redis_cluster_nodes": urls,
        "redis_prefix": "unreachable",
    }))
    .await;
    let joins = (0..8).map(|n| {
        answer(
            server
                .client
                .post(server.url(&format!("/api/rooms/down-{n}/peers")))
                .json(&json!({ "name": "alice" })),
        )
    });
    for refused in futures_util::future::join_all(joins).await {
        assert_eq!(
            (refused.status, refused.body["error"].as_str()),
            (503, Some("store_unavailable")),
            "{}",
            refused.body
        );
        assert!(
            refused.retry_after.is_some() && refused.took < common::flow::FAST,
            "a fast 503 with Retry-After, not one in {:?}",
            refused.took
        );
    }
    let ready = answer(server.client.get(server.url("/readyz"))).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
}

/// After the master of the room's slot is SIGKILLed and its replica promoted, a stream opened
/// on one instance is woken by a send through the other within a couple of seconds: the
/// wake-up connection lost its node with the master and subscribes on the promoted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
)]
async fn wake_ups_follow_a_failed_over_shard() {
    if !common::external::can_run("cluster wake-ups failover", redis_ha::available()) {
        return;
    }
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (a, b) = two_instances(&cluster).await;
    let cluster = Arc::new(Mutex::new(cluster));
    let room = "failing-over";
    let alice = join(&a, room, "alice").await;
    let bob = join(&b, room, "bob").await;
    // Bob's instance subscribes to his channel on the slot's master before the kill.
    let mut before = bob.events(None).await;
    assert_eq!(answer(send(&alice, &bob, 1)).await.status, 202);
    while before.next().await.event != "tick" {}
    drop(before);

    blocking(&cluster, move |cluster| {
        let key = format!("{{{room}}}");
        let slot = cluster.slot_of(&key);
        // The room is on the replica before its master dies: this test is about wake-ups, and
        // a replica that lagged behind the joins would lose the room itself.
        cluster.wait_until_replicated(&key, redis_ha::FAILOVER_DEADLINE);
        let old = cluster.kill_master_of(&key);
        cluster.wait_for_promotion(old, slot, redis_ha::FAILOVER_DEADLINE);
    })
    .await;
    let started = Instant::now();
    loop {
        let sent = answer(send(&alice, &bob, 2)).await;
        if sent.status == 202 {
            break;
        }
        assert!(
            started.elapsed() < recovery(),
            "sends never came back: the last answer was {} {}",
            sent.status,
            sent.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut events = bob.events(None).await;
    let tick = |event: &eventsource_stream::Event| -> Option<u64> {
        (event.event == "tick")
            .then(|| serde_json::from_str::<Value>(&event.data).ok())
            .flatten()
            .and_then(|envelope| envelope["data"]["n"].as_u64())
    };
    while tick(&events.next().await) != Some(2) {}

    let sent = Instant::now();
    assert_eq!(answer(send(&alice, &bob, 3)).await.status, 202);
    let woken = tokio::time::timeout(Duration::from_secs(3), async {
        while tick(&events.next().await) != Some(3) {}
    })
    .await;
    assert!(
        woken.is_ok(),
        "the reader was not woken within 3 s of the send (waited {:?})",
        sent.elapsed()
    );
}
