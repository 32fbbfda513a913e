//! Idempotent sends over HTTP (docs/API.md, Send, "Retrying a send"): a client that retries a
//! send with its `Idempotency-Key` gets the first answer again and its peers get the message
//! once; a key that is not one is refused and changes nothing.

#[macro_use]
mod common;

use common::{Peer, Server};
use reqwest::header::HeaderValue;
use reqwest::RequestBuilder;
use serde_json::{json, Value};

/// A send of `body` by `peer`, not yet sent.
fn send(peer: &Peer, body: &Value) -> RequestBuilder {
    peer.client
        .post(peer.url(&format!("/api/rooms/{}/messages", peer.room)))
        .bearer_auth(&peer.token)
        .json(body)
}

/// What a send answered: its status, its JSON body and its `Idempotent-Replayed` header.
async fn answered(request: RequestBuilder) -> (u16, Value, Option<String>) {
    let response = request.send().await.expect("the send is answered");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|value| value.to_str().expect("ASCII").to_owned());
    let body = response.json().await.expect("a JSON body");
    (status, body, replayed)
}

store_tests! {
    /// A client that retries a send with its key (as after a 503 or a lost answer) gets the
    /// same 202 and body, marked `Idempotent-Replayed: true`, and the recipient gets the
    /// message once: the next thing its stream reads after it is a later send. The same key
    /// with another batch is `409 idempotency_key_reused`, and delivers nothing.
    async fn a_send_retried_with_its_key_is_delivered_once() {
        let server = Server::start().await;
        let alice = server.join("retried", "alice").await;
        let bob = server.join("retried", "bob").await;
        let mut bob_events = bob.events(None).await;
        let offer = json!([{"type": "offer", "to": bob.id, "data": "sdp"}]);

        let first = answered(send(&alice, &offer).header("Idempotency-Key", "offer-1")).await;
        assert_eq!(first, (202, json!({"accepted": 1}), None));
        for _ in 0..3 {
            let retry = answered(send(&alice, &offer).header("Idempotency-Key", "offer-1")).await;
            assert_eq!(retry, (202, json!({"accepted": 1}), Some("true".to_owned())));
        }
        let other = json!({"type": "offer", "to": bob.id, "data": "another sdp"});
        let (status, body, replayed) =
            answered(send(&alice, &other).header("Idempotency-Key", "offer-1")).await;
        assert_eq!((status, body["error"].as_str(), replayed), (409, Some("idempotency_key_reused"), None));
        alice.send_ok(json!({"type": "done", "to": bob.id})).await;

        let got = bob_events.next_message().await;
        assert_eq!((got["type"].as_str(), got["data"].as_str()), (Some("offer"), Some("sdp")));
        assert_eq!(bob_events.next_message().await["type"], "done", "the offer came once");
        assert_eq!(server.metric("signpost_messages_accepted_total").await, 2.0);
    }

    /// An `Idempotency-Key` that is not 1-64 characters of `A-Z a-z 0-9 . _ : -`, or that is
    /// given twice, is `400 invalid_idempotency_key` and delivers nothing; a request without a
    /// token is still `401 missing_token` first.
    async fn a_bad_key_is_refused_and_changes_nothing() {
        let server = Server::start().await;
        let alice = server.join("bad-key", "alice").await;
        let bob = server.join("bad-key", "bob").await;
        let hello = json!({"type": "hello", "to": bob.id});
        let too_long = "k".repeat(65);
        let bad: Vec<HeaderValue> = vec![
            HeaderValue::from_static(""),
            HeaderValue::from_str(&too_long).unwrap(),
            HeaderValue::from_static("a b"),
            HeaderValue::from_static("a/b"),
            HeaderValue::from_static("a,b"),
            HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        ];
        for key in bad {
            let (status, body, _) = answered(send(&alice, &hello).header("Idempotency-Key", key.clone())).await;
            assert_eq!((status, body["error"].as_str()), (400, Some("invalid_idempotency_key")), "{key:?}");
        }
        let twice = send(&alice, &hello)
            .header("Idempotency-Key", "one")
            .header("Idempotency-Key", "two");
        let (status, body, _) = answered(twice).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_idempotency_key")));
        let anonymous = alice
            .client
            .post(alice.url("/api/rooms/bad-key/messages"))
            .header("Idempotency-Key", "a b")
            .json(&hello);
        let (status, body, _) = answered(anonymous).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("missing_token")));

        let (_, inbox) = bob.poll(0, 0.0).await;
        assert_eq!(inbox["last_id"], 0, "nothing was delivered: {inbox}");
        let longest = "k".repeat(64);
        let good = answered(send(&alice, &hello).header("Idempotency-Key", longest)).await;
        assert_eq!(good, (202, json!({"accepted": 1}), None));
    }
}

/// A page on another origin may send `Idempotency-Key` (the preflight allows it) and read
/// `Idempotent-Replayed` (it is exposed).
#[tokio::test]
async fn browsers_may_send_the_key_and_read_the_replay_mark() {
    const APP: &str = "https://app.example.org";
    let server = Server::with(json!({"cors_allowed_origins": [APP]})).await;
    let preflight = server
        .client
        .request(
            reqwest::Method::OPTIONS,
            server.url("/api/rooms/cors/messages"),
        )
        .header("Origin", APP)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "idempotency-key")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("Idempotency-Key"), "{allowed}");

    let alice = server.join("cors", "alice").await;
    let bob = server.join("cors", "bob").await;
    let hello = json!({"type": "hello", "to": bob.id});
    for _ in 0..2 {
        let response = send(&alice, &hello)
            .header("Origin", APP)
            .header("Idempotency-Key", "k")
            .send()
            .await
            .unwrap();
        let exposed = response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("Idempotent-Replayed"), "{exposed}");
    }
}

/// The typed client's `send_batch_with_key`, called again with the same key and messages (as
/// after an error), answers as the first call and delivers the batch once.
#[tokio::test]
async fn the_typed_client_retries_under_its_key() {
    let server = Server::start().await;
    let alice = server.join("typed-key", "alice").await;
    let bob = server.join("typed-key", "bob").await;
    let typed = alice.typed();
    let offer = [signpost::client::Message::new("offer").to(&bob.id)];
    assert_eq!(
        typed.send_batch_with_key(&offer, "typed-1").await.unwrap(),
        1
    );
    assert_eq!(
        typed.send_batch_with_key(&offer, "typed-1").await.unwrap(),
        1
    );
    let (_, inbox) = bob.poll(0, 0.0).await;
    assert_eq!(inbox["last_id"], 1, "delivered once: {inbox}");
}
