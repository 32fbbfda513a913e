//! `signpost::client`, the typed Rust client, against a real server: joining, sending one message
//! and batches, the SSE stream that resumes by itself across cut connections, long-polling,
//! leaving, and refusals as typed errors with the API's codes.

mod common;
#[path = "common/proxy.rs"]
#[allow(dead_code)] // what the browser tests use besides
mod proxy;
#[path = "common/typed.rs"]
mod typed;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use signpost::client::{Client, ClientError, Event, JoinOptions, Message};

use common::eventually::eventually;
use common::{Server, EVENT_DEADLINE};
use proxy::{Hostility, Proxy};
use typed::next_message;

/// Two peers join; one sends a message and a batch, the other receives them in order on its
/// stream with the sender's id, and the join answers carry what the client exposes.
#[tokio::test]
async fn peers_join_send_and_receive() {
    let server = Server::start().await;
    let client = Client::new(&server.base);
    let alice = client
        .join(
            "client",
            JoinOptions::named("Alice").meta(json!({"avatar": "a.png"})),
        )
        .await
        .unwrap();
    let mut alice_events = alice.events().await.unwrap();
    let bob = client.join("client", JoinOptions::default()).await.unwrap();
    assert_eq!(bob.room(), "client");
    assert_eq!(bob.peers().len(), 1);
    assert_eq!(bob.peers()[0].peer_id, alice.id());
    assert_eq!(bob.peers()[0].name.as_deref(), Some("Alice"));
    assert_eq!(bob.peers()[0].meta, Some(json!({"avatar": "a.png"})));
    assert_eq!(bob.token().len(), 64);

    let join = next_message(&mut alice_events).await;
    assert_eq!((join.id, join.kind.as_str(), join.from), (1, "join", None));
    assert_eq!(join.data["peer_id"], bob.id());

    let accepted = bob
        .send(
            Message::new("offer")
                .to(alice.id())
                .data(json!({"sdp": "v=0"})),
        )
        .await
        .unwrap();
    assert_eq!(accepted, 1);
    let batch = [
        Message::new("candidate")
            .to(alice.id())
            .data(json!({"n": 1})),
        Message::new("candidate").to(alice.id()),
    ];
    assert_eq!(bob.send_batch(&batch).await.unwrap(), 2);
    for (id, kind, data) in [
        (2, "offer", json!({"sdp": "v=0"})),
        (3, "candidate", json!({"n": 1})),
        (4, "candidate", json!(null)),
    ] {
        let envelope = next_message(&mut alice_events).await;
        assert_eq!(envelope.id, id);
        assert_eq!(envelope.kind, kind);
        assert_eq!(envelope.from.as_deref(), Some(bob.id()));
        assert_eq!(envelope.data, data);
    }
    let room = client.room("client").await.unwrap();
    assert_eq!(room.len(), 2);
}

/// A stream cut by a proxy every 300 ms is resumed by the client with `Last-Event-ID`: every
/// message arrives once, in order, across the cuts, including those sent while it was cut.
#[tokio::test]
async fn the_stream_resumes_by_itself() {
    let server = Server::start().await;
    let hostility = Hostility {
        cut_streams_after: Some(Duration::from_millis(300)),
        ..Hostility::default()
    };
    let proxy = Proxy::start(&server.base, hostility).await;
    let alice = Client::new(&proxy.base)
        .join("resume", JoinOptions::named("Alice"))
        .await
        .unwrap();
    let bob = Client::new(&server.base)
        .join("resume", JoinOptions::named("Bob"))
        .await
        .unwrap();
    let mut alice_events = alice.events().await.unwrap();
    assert_eq!(next_message(&mut alice_events).await.kind, "join");
    let mut expected_id = 2;
    for round in 0..3 {
        // Wait for the proxy to cut the current stream, then send while the client reconnects.
        let cuts_before = proxy.seen().iter().filter(|seen| seen.cut).count();
        eventually("a cut", || async {
            proxy.seen().iter().filter(|seen| seen.cut).count() != cuts_before
        })
        .await;
        for n in 0..3 {
            let message = Message::new("chat").to(alice.id()).data(json!([round, n]));
            bob.send(message).await.unwrap();
        }
        for n in 0..3 {
            let envelope = next_message(&mut alice_events).await;
            assert_eq!(envelope.id, expected_id, "gapless and not repeated");
            assert_eq!(envelope.data, json!([round, n]));
            expected_id += 1;
        }
    }
    let streams = proxy
        .seen()
        .iter()
        .filter(|seen| seen.target.contains("/events"))
        .count();
    assert!(streams >= 4, "the client reconnected after each cut");
}

/// Long-polling returns what came after `after` and acknowledges up to it; an empty wait
/// returns nothing.
#[tokio::test]
async fn long_polls() {
    let server = Server::start().await;
    let client = Client::new(&server.base);
    let alice = client.join("poll", JoinOptions::default()).await.unwrap();
    let bob = client.join("poll", JoinOptions::default()).await.unwrap();
    let first = alice.poll(0, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.messages[0].kind, "join");
    assert_eq!((first.last_id, first.reset), (1, false));
    let empty = alice.poll(first.last_id, Duration::ZERO).await.unwrap();
    assert!(empty.messages.is_empty());
    bob.send(Message::new("chat")).await.unwrap();
    let chat = alice
        .poll(first.last_id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(chat.messages[0].kind, "chat");
    assert_eq!(chat.messages[0].from.as_deref(), Some(bob.id()));
}

/// Refusals are `ClientError::Api` with the API's status and code; after leaving, the peer's
/// stream ends with the refusal of its reconnection.
#[tokio::test]
async fn refusals_are_typed() {
    let server = Server::start().await;
    let client = Client::new(&server.base);
    let code = |error: ClientError| match error {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("not a refusal: {other}"),
    };
    let bad_room = client
        .join("no room/name?", JoinOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(bad_room), (400, "invalid_room_name".to_owned()));
    let bad_name = client
        .join("typed", JoinOptions::named("a\u{7}b"))
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Some("invalid_name"));

    let alice = client.join("typed", JoinOptions::default()).await.unwrap();
    let stranger = Message::new("offer").to(uuid::Uuid::new_v4().to_string());
    let refused = alice.send(stranger).await.unwrap_err();
    assert_eq!(code(refused), (409, "unknown_recipient".to_owned()));
    let reserved = alice.send(Message::new("join")).await.unwrap_err();
    assert_eq!(reserved.code(), Some("invalid_type"));

    let mut events = alice.events().await.unwrap();
    assert!(matches!(
        events.next().await,
        Some(Ok(Event::Ready { last_id: 0 }))
    ));
    alice.leave().await.unwrap();
    let ended = tokio::time::timeout(EVENT_DEADLINE, events.next())
        .await
        .expect("the stream ends");
    let error = ended.expect("one last item").unwrap_err();
    assert_eq!(error.code(), Some("room_not_found"));
    assert!(events.next().await.is_none());
    assert_eq!(
        client.room("typed").await.unwrap_err().code(),
        Some("room_not_found")
    );
}
