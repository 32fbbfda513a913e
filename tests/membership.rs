//! Joining, leaving, presence and looking at rooms. Where a test is about behaviour rather than
//! the wire format, it speaks through `signpost::client`, the typed client.

#[macro_use]
mod common;
#[path = "common/typed.rs"]
mod typed;

use std::time::Duration;

use common::Server;
use serde_json::{json, Value};
use signpost::client::{Client, JoinOptions, Message};
use typed::next_message;

store_tests! {
    /// A join creates the room and hands the peer its id, a long random token, the peers already
    /// there (without their tokens), the ICE servers and the URLs of its endpoints.
    async fn join_creates_the_room_and_returns_credentials() {
        let server = Server::start().await;
        assert_eq!(
            server.get_json("/api/rooms/standup").await.0,
            404,
            "no room before the first join"
        );

        let response = server
            .client
            .post(server.url("/api/rooms/standup/peers"))
            .json(&json!({"name": "alice", "meta": {"avatar": "a.png"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "the token is never cached"
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let alice: Value = response.json().await.unwrap();
        let alice_id = alice["peer_id"].as_str().unwrap();
        assert_eq!(location, format!("/api/rooms/standup/peers/{alice_id}"));
        assert!(uuid::Uuid::parse_str(alice_id).is_ok());
        let token = alice["token"].as_str().unwrap();
        assert_eq!(token.len(), 64, "256 bits as hex");
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(alice["room"], "standup");
        assert_eq!(alice["peers"], json!([]));
        assert_eq!(alice["ice_servers"], json!([]));
        assert_eq!(alice["events_url"], format!("{location}/events"));
        assert_eq!(alice["poll_url"], format!("{location}/messages"));
        assert_eq!(alice["send_url"], "/api/rooms/standup/messages");
        assert_eq!(alice["leave_url"], location);

        let bob = server.join("standup", "bob").await;
        assert_eq!(
            bob.joined["peers"],
            json!([{"peer_id": alice_id, "name": "alice", "meta": {"avatar": "a.png"}}])
        );
        assert_ne!(bob.token, token);

        let (status, room) = server.get_json("/api/rooms/standup").await;
        assert_eq!(status, 200);
        assert_eq!(room["peers"].as_array().unwrap().len(), 2);
        assert!(
            !room.to_string().contains(token),
            "a room listing never shows a token"
        );
        let (status, peer) = server.get_json(&location).await;
        assert_eq!((status, peer["name"].clone()), (200, json!("alice")));
    }
}

store_tests! {
    /// An empty body is a join without a name.
    async fn join_body_is_optional() {
        let server = Server::start().await;
        let response = server
            .client
            .post(server.url("/api/rooms/quiet/peers"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["name"], Value::Null);
    }
}

store_tests! {
    /// Peers already in a room hear a `join` (with the newcomer's id and name, and no token), and a
    /// `leave` with reason `left` when it leaves; the last one out removes the room.
    async fn joins_and_leaves_are_announced_and_empty_rooms_disappear() {
        let server = Server::start().await;
        let client = Client::new(&server.base);
        let alice = client.join("lobby", JoinOptions::named("alice")).await.unwrap();
        let mut alice_events = alice.events().await.unwrap();

        let bob = client.join("lobby", JoinOptions::named("bob")).await.unwrap();
        let join = next_message(&mut alice_events).await;
        assert_eq!(join.kind, "join");
        assert_eq!(join.data, json!({"peer_id": bob.id(), "name": "bob"}));
        assert_eq!(join.from, None, "server events have no sender");
        assert!(!join.data.to_string().contains(bob.token()));

        bob.leave().await.unwrap();
        let leave = next_message(&mut alice_events).await;
        assert_eq!(leave.kind, "leave");
        assert_eq!(leave.data, json!({"peer_id": bob.id(), "reason": "left"}));
        let peers = client.room("lobby").await.unwrap();
        assert!(peers.iter().all(|peer| peer.peer_id != bob.id()));

        drop(alice_events);
        alice.leave().await.unwrap();
        let gone = client.room("lobby").await.unwrap_err();
        assert_eq!(gone.code(), Some("room_not_found"), "the empty room is gone");
    }
}

store_tests! {
    /// `navigator.sendBeacon` can only POST and cannot set headers: the beacon route with `?token=`
    /// leaves just like DELETE.
    async fn a_beacon_leaves_the_room() {
        let server = Server::start().await;
        let alice = server.join("beacon", "alice").await;
        let mut alice_events = alice.events(None).await;
        let bob = server.join("beacon", "bob").await;
        assert_eq!(alice_events.next_message().await["type"], "join");

        let response = server
            .client
            .post(server.url(&format!("{}/leave?token={}", bob.peer_path(), bob.token)))
            .header("content-type", "text/plain;charset=UTF-8")
            .body("bye")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        let leave = alice_events.next_message().await;
        assert_eq!(leave["data"], json!({"peer_id": bob.id, "reason": "left"}));
    }
}

store_tests! {
    /// A peer with no stream and no poll for `peer_timeout_secs` is removed, and the others get
    /// `leave` with reason `timeout`; its credentials stop working.
    async fn a_silent_peer_times_out() {
        let server = Server::with(json!({"peer_timeout_secs": 0.3})).await;
        let client = Client::new(&server.base);
        let alice = client.join("presence", JoinOptions::named("alice")).await.unwrap();
        let mut alice_events = alice.events().await.unwrap();
        let bob = client.join("presence", JoinOptions::named("bob")).await.unwrap();
        assert_eq!(next_message(&mut alice_events).await.kind, "join");

        // Bob never listens. Alice's open stream keeps her present while Bob times out.
        let leave = next_message(&mut alice_events).await;
        assert_eq!(leave.kind, "leave");
        assert_eq!(leave.data, json!({"peer_id": bob.id(), "reason": "timeout"}));
        let refused = bob.poll(0, Duration::ZERO).await.unwrap_err();
        assert_eq!(refused.code(), Some("peer_not_found"));
    }
}

store_tests! {
    /// A poll in flight counts as presence just like an open stream: a peer that keeps polling is
    /// never timed out, even when each poll waits longer than the timeout.
    async fn a_polling_peer_stays_present() {
        let server = Server::with(json!({"peer_timeout_secs": 0.3})).await;
        let client = Client::new(&server.base);
        let alice = client.join("polling", JoinOptions::named("alice")).await.unwrap();
        let _alice_events = alice.events().await.unwrap();
        let bob = client.join("polling", JoinOptions::named("bob")).await.unwrap();

        // Bob's poll waits 1 s (over three timeouts) with nothing to receive, then Alice writes.
        let waited = bob.poll(0, Duration::from_secs(1)).await.unwrap();
        assert!(waited.messages.is_empty(), "nothing arrived during the wait");
        alice.send(Message::new("offer").to(bob.id())).await.unwrap();
        let offer = bob.poll(waited.last_id, Duration::from_secs(1)).await.unwrap();
        assert_eq!(offer.messages[0].kind, "offer");

        let peers = client.room("polling").await.unwrap();
        assert_eq!(peers.len(), 2, "both peers are still present");
    }
}
