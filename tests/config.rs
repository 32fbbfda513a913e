//! Configuration: defaults that work, and bad settings that stop the server from starting.

mod common;

use common::{test_figment, Server};
use rocket::figment::Figment;
use serde_json::json;

fn figment(key: &str, value: serde_json::Value) -> Figment {
    let mut settings = serde_json::Map::new();
    settings.insert(key.to_owned(), value);
    test_figment(settings.into())
}

/// A misspelt key or a nonsensical value refuses to start rather than silently using a default.
#[tokio::test]
async fn bad_settings_stop_the_server_from_starting() {
    for (key, value) in [
        ("mailbox_capasity", json!(10)),
        ("peer_timeout_secs", json!(-1.0)),
        ("max_peers_per_room", json!("many")),
        ("ice_servers", json!([{"url": "stun:x"}])),
        ("client_ipv6_prefix", json!(16)),
        ("client_ipv6_prefix", json!(129)),
        ("max_rooms_per_client", json!(0)),
    ] {
        match signpost::build(figment(key, value.clone())).ignite().await {
            Ok(_) => panic!("{key} = {value} should be refused"),
            Err(error) => assert!(
                matches!(error.kind(), rocket::error::ErrorKind::FailedFairings(_)),
                "{key} = {value}: refused by signpost's config fairing, not {error}"
            ),
        }
    }
}

/// ICE servers configured in `Rocket.toml` are handed to every peer that joins.
#[tokio::test]
async fn configured_ice_servers_reach_joining_peers() {
    let ice = json!([{"urls": ["stun:stun.example.org:3478"]}, {"urls": ["turn:turn.example.org"], "username": "u", "credential": "c"}]);
    let server = Server::with(json!({ "ice_servers": ice })).await;
    let alice = server.join("ice", "alice").await;
    assert_eq!(alice.joined["ice_servers"], ice);
}

/// A build without the `redis-tls` feature refuses a `rediss://` URL at start, and its message
/// says how to get TLS to Redis: build with the feature.
#[cfg(not(feature = "redis-tls"))]
#[tokio::test]
async fn without_the_feature_rediss_is_refused_with_how_to_get_it() {
    let refusal =
        common::instance::Instance::refusal(r#"redis_url="rediss://127.0.0.1:6380""#).await;
    for expected in ["signpost.redis_url", "rediss://", "--features redis-tls"] {
        assert!(refusal.contains(expected), "{expected:?} in {refusal}");
    }
}

/// Every setting in seconds has an upper bound: an absurd value (a leeway that would overflow
/// the clock, a timeout of centuries) stops the server at start with a message that names the
/// key and its bound, instead of refusing every token or panicking later.
#[tokio::test]
async fn absurd_durations_are_refused_naming_the_key_and_its_bound() {
    for (key, value, bound) in [
        ("join_token_leeway_secs", "9223372036854775807", "3600"),
        ("turn_credential_ttl_secs", "9223372036854775807", "2592000"),
        ("peer_timeout_secs", "1000000000.0", "86400"),
        ("heartbeat_secs", "1000000000.0", "3600"),
        ("poll_max_wait_secs", "1000000000.0", "3600"),
        ("body_read_timeout_secs", "1000000000.0", "3600"),
        ("write_timeout_secs", "1000000000.0", "3600"),
        ("idempotency_window_secs", "1000000000", "86400"),
    ] {
        let refusal = common::instance::Instance::refusal(&format!("{key}={value}")).await;
        for expected in [format!("signpost.{key}"), bound.to_owned()] {
            assert!(refusal.contains(&expected), "{expected:?} in {refusal}");
        }
    }
    // At the bound itself, the server starts.
    for (key, value) in [
        ("join_token_leeway_secs", json!(3600)),
        ("turn_credential_ttl_secs", json!(2_592_000)),
        ("peer_timeout_secs", json!(86400.0)),
        ("heartbeat_secs", json!(3600.0)),
        ("poll_max_wait_secs", json!(3600.0)),
        ("body_read_timeout_secs", json!(3600.0)),
        ("write_timeout_secs", json!(3600.0)),
        ("idempotency_window_secs", json!(86400)),
    ] {
        assert!(
            signpost::build(figment(key, value.clone()))
                .ignite()
                .await
                .is_ok(),
            "{key} = {value} is within its bound"
        );
    }
}

/// Sentinel's settings go together and alone: `redis_sentinels` without
/// `redis_sentinel_master` (or the reverse), both beside `redis_url`, an empty list, a URL of
/// another scheme, a mix of `redis://` and `rediss://`, the sentinels' password without them,
/// and `redis_wait_replicas` without a
/// Redis store or with a timeout that would not be fast each stop the server at start, with a
/// message naming the keys.
#[tokio::test]
async fn sentinel_settings_are_refused_unless_complete_and_alone() {
    let sentinels = r#"redis_sentinels=["redis://127.0.0.1:26379"]"#;
    let master = r#"redis_sentinel_master="signpost""#;
    let url = r#"redis_url="redis://127.0.0.1:6379""#;
    for (settings, expected) in [
        (
            sentinels.to_owned(),
            vec!["signpost.redis_sentinels", "signpost.redis_sentinel_master"],
        ),
        (
            master.to_owned(),
            vec!["signpost.redis_sentinel_master", "signpost.redis_sentinels"],
        ),
        (
            format!("{sentinels},{master},{url}"),
            vec![
                "signpost.redis_url",
                "signpost.redis_sentinels",
                "one of them",
            ],
        ),
        (
            format!("redis_sentinels=[],{master}"),
            vec!["signpost.redis_sentinels is empty"],
        ),
        (
            format!(r#"redis_sentinels=["http://127.0.0.1:26379"],{master}"#),
            vec!["redis://", "http://127.0.0.1:26379"],
        ),
        (
            format!(r#"redis_sentinels=["redis://a:26379","rediss://b:26379"],{master}"#),
            vec!["every URL is rediss://"],
        ),
        (
            format!(r#"{url},redis_sentinel_password="pw""#),
            vec![
                "signpost.redis_sentinel_password",
                "signpost.redis_sentinels",
            ],
        ),
        (
            "redis_wait_replicas=1".to_owned(),
            vec!["signpost.redis_wait_replicas", "Redis store"],
        ),
        (
            format!("{url},redis_wait_replicas=1,redis_wait_timeout_ms=5000"),
            vec!["signpost.redis_wait_timeout_ms", "1 to 1000"],
        ),
    ] {
        let refusal = common::instance::Instance::refusal(&settings).await;
        for expected in expected {
            assert!(
                refusal.contains(expected),
                "{settings}: {expected:?} in {refusal}"
            );
        }
    }
}

/// Redis Cluster's settings go alone: `redis_cluster_nodes` beside `redis_url` or
/// `redis_sentinels`, an empty list, a URL of another scheme, a mix of `redis://` and
/// `rediss://`, and `redis_wait_replicas` (WAIT is per node) each stop the server at start, with
/// a message naming the keys.
#[tokio::test]
async fn cluster_settings_are_refused_unless_alone() {
    let nodes = r#"redis_cluster_nodes=["redis://127.0.0.1:7000"]"#;
    let sentinels =
        r#"redis_sentinels=["redis://127.0.0.1:26379"],redis_sentinel_master="signpost""#;
    let url = r#"redis_url="redis://127.0.0.1:6379""#;
    for (settings, expected) in [
        (
            format!("{nodes},{url}"),
            vec![
                "signpost.redis_cluster_nodes",
                "signpost.redis_url",
                "one of them",
            ],
        ),
        (
            format!("{nodes},{sentinels}"),
            vec![
                "signpost.redis_cluster_nodes",
                "signpost.redis_sentinels",
                "one of them",
            ],
        ),
        (
            "redis_cluster_nodes=[]".to_owned(),
            vec!["signpost.redis_cluster_nodes is empty"],
        ),
        (
            r#"redis_cluster_nodes=["http://127.0.0.1:7000"]"#.to_owned(),
            vec!["redis://", "http://127.0.0.1:7000"],
        ),
        (
            r#"redis_cluster_nodes=["redis://a:7000","rediss://b:7000"]"#.to_owned(),
            vec!["every URL is rediss://"],
        ),
        (
            format!("{nodes},redis_wait_replicas=1"),
            vec![
                "signpost.redis_wait_replicas",
                "signpost.redis_cluster_nodes",
            ],
        ),
    ] {
        let refusal = common::instance::Instance::refusal(&settings).await;
        for expected in expected {
            assert!(
                refusal.contains(expected),
                "{settings}: {expected:?} in {refusal}"
            );
        }
    }
}
