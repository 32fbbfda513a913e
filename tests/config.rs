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
