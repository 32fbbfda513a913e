//! Joining, leaving, presence and looking at rooms.

#[macro_use]
mod common;

use common::Server;
use serde_json::{json, Value};

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
        let alice = server.join("lobby", "alice").await;
        let mut alice_events = alice.events(None).await;

        let bob = server.join("lobby", "bob").await;
        let join = alice_events.next_message().await;
        assert_eq!(join["type"], "join");
        assert_eq!(join["data"], json!({"peer_id": bob.id, "name": "bob"}));
        assert!(join.get("from").is_none(), "server events have no sender");
        assert!(!join.to_string().contains(&bob.token));

        assert_eq!(bob.leave().await, 204);
        let leave = alice_events.next_message().await;
        assert_eq!(leave["type"], "leave");
        assert_eq!(leave["data"], json!({"peer_id": bob.id, "reason": "left"}));
        assert_eq!(
            server
                .get_json(&format!("/api/rooms/lobby/peers/{}", bob.id))
                .await
                .0,
            404
        );

        drop(alice_events);
        assert_eq!(alice.leave().await, 204);
        assert_eq!(
            server.get_json("/api/rooms/lobby").await.0,
            404,
            "the empty room is gone"
        );
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
        let alice = server.join("presence", "alice").await;
        let mut alice_events = alice.events(None).await;
        let bob = server.join("presence", "bob").await;
        assert_eq!(alice_events.next_message().await["type"], "join");

        // Bob never listens. Alice's open stream keeps her present while Bob times out.
        let leave = alice_events.next_message().await;
        assert_eq!(leave["type"], "leave");
        assert_eq!(
            leave["data"],
            json!({"peer_id": bob.id, "reason": "timeout"})
        );
        let (status, body) = bob.poll(0, 0.0).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("peer_not_found"))
        );
    }
}

store_tests! {
    /// A poll in flight counts as presence just like an open stream: a peer that keeps polling is
    /// never timed out, even when each poll waits longer than the timeout.
    async fn a_polling_peer_stays_present() {
        let server = Server::with(json!({"peer_timeout_secs": 0.3})).await;
        let alice = server.join("polling", "alice").await;
        let _alice_events = alice.events(None).await;
        let bob = server.join("polling", "bob").await;

        // Bob's poll waits 1 s (over three timeouts) with nothing to receive, then Alice writes.
        let (status, body) = bob.poll(0, 1.0).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["messages"],
            json!([]),
            "nothing arrived during the wait"
        );
        alice.send_ok(json!({"type": "offer", "to": bob.id})).await;
        let (status, body) = bob.poll(body["last_id"].as_u64().unwrap(), 1.0).await;
        assert_eq!(status, 200);
        assert_eq!(body["messages"][0]["type"], "offer");

        let (_, room) = server.get_json("/api/rooms/polling").await;
        assert_eq!(
            room["peers"].as_array().unwrap().len(),
            2,
            "both peers are still present"
        );
    }
}
