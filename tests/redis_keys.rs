//! What the Redis store leaves in Redis: every key a room's scripts write expires. Keys outlive
//! their peers but not the instances looking after them (`src/store/redis/lua/room.lua`); a key
//! without an expiry would stay in Redis for good once its room was abandoned. Presence
//! refreshes skip renewing expiries this server set a moment ago ("Expiry" in room.lua), so
//! every script that creates a key must give it its expiry itself: these tests hold them to it.

#[macro_use]
mod common;

use std::sync::Mutex;

use common::redis::Redis;
use common::{external, Server};
use serde_json::json;

/// One Redis of the test's own (started one test at a time: a free port is chosen before the
/// server binds it) and one instance on it, with its key prefix.
async fn lab(test: &str) -> Option<(Redis, Server, String)> {
    static STARTING: Mutex<()> = Mutex::new(());
    if !external::can_run(test, Redis::available()) {
        return None;
    }
    let redis = {
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        Redis::start()
    };
    let prefix = format!("keys-{}", uuid::Uuid::new_v4().simple());
    let server = Server::with(json!({
        "redis_url": redis.url(),
        "redis_prefix": prefix,
    }))
    .await;
    Some((redis, server, prefix))
}

/// The keys under `prefix` that have no expiry, and how many keys there are.
fn keys_without_expiry(redis: &Redis, prefix: &str) -> (Vec<String>, usize) {
    let keys = redis.cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
    let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
    let lasting = keys
        .iter()
        .filter(|key| redis.cli(&["PTTL", key]).trim() == "-1")
        .map(|key| key.to_string())
        .collect();
    (lasting, keys.len())
}

/// A room's keys, its mailboxes' lists and the deployment-wide keys all expire, after joins,
/// sends, reads by stream and by poll, and leaves; and a room emptied and joined again at once
/// gets expiries for its new keys, though this server renewed the old ones a moment before.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_a_room_writes_expires() {
    let Some((redis, server, prefix)) = lab("every_key_a_room_writes_expires").await else {
        return;
    };
    let alice = server.join("lasting", "alice").await;
    let bob = server.join("lasting", "bob").await;
    let carol = server.join("lasting", "carol").await;
    // A message for each, to one and to everyone, and reads by both transports.
    alice
        .send_ok(json!({"type": "offer", "to": bob.id, "data": {"n": 1}}))
        .await;
    bob.send_ok(json!({"type": "candidate", "data": {"n": 2}}))
        .await;
    let (status, polled) = bob.poll(0, 0.0).await;
    assert_eq!(status, 200);
    assert!(
        polled["messages"].as_array().is_some_and(|m| !m.is_empty()),
        "{polled}"
    );
    let mut carol_events = carol.events(None).await;
    carol_events.next_message().await;
    let (lasting, total) = keys_without_expiry(&redis, &prefix);
    assert!(
        total >= 8,
        "the room, its mailboxes and the global keys: {total}"
    );
    assert!(lasting.is_empty(), "keys without an expiry: {lasting:?}");
    drop(carol_events);

    // Emptied, then joined again straight away: new keys, created within a moment of the old
    // ones' renewal.
    for peer in [&alice, &bob, &carol] {
        assert_eq!(peer.leave().await, 204);
    }
    let dave = server.join("lasting", "dave").await;
    let erin = server.join("lasting", "erin").await;
    dave.send_ok(json!({"type": "offer", "to": erin.id})).await;
    let (status, _) = erin.poll(0, 0.0).await;
    assert_eq!(status, 200);
    let (lasting, total) = keys_without_expiry(&redis, &prefix);
    assert!(total >= 8, "{total}");
    assert!(lasting.is_empty(), "keys without an expiry: {lasting:?}");
    server.stop().await;
}
