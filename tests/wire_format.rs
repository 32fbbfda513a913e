//! The bytes on the wire where the server writes them by hand for speed: the SSE stream (one
//! chunk per mailbox read instead of Rocket's `EventStream`) and the request body reader. These
//! tests hold them to `docs/API.md` byte for byte, so an optimisation cannot drift from it.

#[macro_use]
mod common;

use std::time::Duration;

use common::read_until::read_until;
use common::Server;
use serde_json::json;

store_tests! {
    /// The stream's headers and events are exactly those of docs/API.md: `ready` first without an
    /// id, then each message as `id:`, `event:` and `data:` lines and a blank line; data that spans
    /// lines (a client's raw JSON may) is split into one `data:` field per line. The send's answer
    /// is `{"accepted":1}`.
    async fn sse_events_are_written_field_for_field() {
        let server = Server::start().await;
        let alice = server.join("wire", "alice").await;
        let bob = server.join("wire", "bob").await;
        let response = bob
            .client
            .post(bob.url("/api/rooms/wire/messages"))
            .bearer_auth(&bob.token)
            .header("Content-Type", "application/json")
            .body(format!(
                "{{\"type\":\"offer\",\"to\":\"{}\",\"data\":{{\"a\":\n1}}}}",
                alice.id
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        assert_eq!(response.text().await.unwrap(), r#"{"accepted":1}"#);

        let mut response = alice.events_response(None).await;
        assert_eq!(response.status(), 200);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "text/event-stream");
        assert_eq!(header("cache-control"), "no-cache");
        assert_eq!(header("x-accel-buffering"), "no");

        let body = read_until(&mut response, "data:1}}\n\n").await;
        let join = format!(
            "id:1\nevent:join\ndata:{{\"id\":1,\"type\":\"join\",\"data\":{{\"peer_id\":\"{}\",\"name\":\"bob\"}}}}\n\n",
            bob.id
        );
        let offer = format!(
            "id:2\nevent:offer\ndata:{{\"id\":2,\"from\":\"{}\",\"type\":\"offer\",\"data\":{{\"a\":\ndata:1}}}}\n\n",
            bob.id
        );
        let ready = format!(
            "event:ready\ndata:{{\"peer_id\":\"{}\",\"last_id\":2}}\n\n",
            alice.id
        );
        assert_eq!(body, format!("{ready}{join}{offer}"));
        server.stop().await;
    }
}

store_tests! {
    /// A `:` comment line comes every `heartbeat_secs`, so that proxies see traffic.
    async fn an_idle_stream_gets_heartbeat_comments() {
        let server = Server::with(json!({ "heartbeat_secs": 0.1 })).await;
        let alice = server.join("beat", "alice").await;
        let mut response = alice.events_response(None).await;
        let body = read_until(&mut response, "\n\n:\n:\n").await;
        assert!(body.starts_with("event:ready\n"), "{body:?}");
        server.stop().await;
    }
}

store_tests! {
    /// A body of exactly `max_body_bytes` is read whole; one byte more is refused with 413
    /// `body_too_large` and changes nothing.
    async fn the_body_limit_is_exact() {
        let limit = 200;
        let server = Server::with(json!({ "max_body_bytes": limit })).await;
        let alice = server.join("limit", "alice").await;
        let mut events = alice.events(None).await;
        let bob = server.join("limit", "bob").await;
        assert_eq!(events.next().await.event, "join");

        let message = format!("{{\"type\":\"ping\",\"to\":\"{}\"}}", alice.id);
        let send = |body: String| {
            bob.client
                .post(bob.url("/api/rooms/limit/messages"))
                .bearer_auth(&bob.token)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
        };
        let at_limit = format!("{message:<limit$}");
        assert_eq!(at_limit.len(), limit);
        assert_eq!(send(at_limit).await.unwrap().status(), 202);
        assert_eq!(events.next().await.event, "ping");

        let over = format!("{message:<width$}", width = limit + 1);
        let response = send(over).await.unwrap();
        assert_eq!(response.status(), 413);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"], "body_too_large");
        // Nothing was relayed: the next event alice sees is the one sent after.
        assert_eq!(send(message).await.unwrap().status(), 202);
        let next = tokio::time::timeout(Duration::from_secs(5), events.next_message())
            .await
            .expect("the last message arrives");
        assert_eq!(next["id"], 3, "the refused body took no id");
        server.stop().await;
    }
}

store_tests! {
    /// A path segment is percent-decoded before it is read as a room name or a peer id, on the
    /// relay routes as on the others, and `?token=` is form-decoded: `a%2Eb` is the room `a.b`.
    async fn encoded_paths_and_queries_name_the_same_room_and_peer() {
        let server = Server::start().await;
        let alice = server.join("a.b", "alice").await;
        let bob = server.join("a.b", "bob").await;
        let encoded_peer = bob.id.replace('-', "%2D");

        let sent = server
            .client
            .post(server.url("/api/rooms/a%2Eb/messages"))
            .bearer_auth(&alice.token)
            .json(&json!({"type": "offer", "to": bob.id}))
            .send()
            .await
            .expect("send");
        assert_eq!(sent.status(), 202);
        let polled = server
            .client
            .get(server.url(&format!(
                "/api/rooms/a%2Eb/peers/{encoded_peer}/messages?wait=0&token={}",
                bob.token
            )))
            .send()
            .await
            .expect("poll");
        assert_eq!(polled.status(), 200);
        let body: serde_json::Value = polled.json().await.expect("JSON");
        assert_eq!(body["messages"][0]["type"], "offer");
        assert_eq!(body["messages"][0]["from"], alice.id);
        let (status, room) = server.get_json("/api/rooms/a%2Eb").await;
        assert_eq!(status, 200);
        assert_eq!(room["peers"].as_array().map(Vec::len), Some(2));
    }
}

store_tests! {
    /// The relay routes' responses carry the headers every API response carries, whichever layer
    /// answers it: `Cache-Control: no-store` (so no proxy replays a poll), `nosniff`, JSON.
    async fn relay_responses_carry_the_api_headers() {
        let server = Server::start().await;
        let alice = server.join("headers", "alice").await;
        let bob = server.join("headers", "bob").await;
        let sent = alice.send(json!({"type": "offer", "to": bob.id})).await;
        let poll = |query: &str| {
            bob.client
                .get(bob.url(&format!("{}/messages?{query}", bob.peer_path())))
                .bearer_auth(&bob.token)
                .send()
        };
        let polled = poll("wait=0").await.expect("poll");
        let refused = poll("wait=x").await.expect("poll");
        for (what, response) in [("send", sent), ("poll", polled), ("refusal", refused)] {
            let headers = response.headers();
            assert_eq!(headers["content-type"], "application/json", "{what}");
            assert_eq!(headers["cache-control"], "no-store", "{what}");
            assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        }
    }
}
