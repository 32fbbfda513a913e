//! Every bad input gets a precise 4xx JSON error and changes nothing.

#[macro_use]
mod common;

use common::{Peer, Server};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

/// Sends a request and returns its status and JSON error body, checking the error's shape.
async fn refused(request: RequestBuilder) -> (u16, String) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    assert!((400..500).contains(&status), "expected a 4xx, got {status}");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.expect("error body is JSON");
    let code = body["error"].as_str().expect("error code").to_owned();
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message for people"
    );
    assert!(
        code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "snake_case code {code}"
    );
    (status, code)
}

fn send(peer: &Peer) -> RequestBuilder {
    peer.client
        .post(peer.url(&format!("/api/rooms/{}/messages", peer.room)))
        .bearer_auth(&peer.token)
}

/// Asserts `peer`'s mailbox has exactly the ids `1..=count` (the rejected requests added none).
async fn assert_mailbox_holds(peer: &Peer, count: u64) {
    let (_, body) = peer.poll(0, 0.0).await;
    assert_eq!(
        body["last_id"], count,
        "mailbox of {} changed: {body}",
        peer.id
    );
}

store_tests! {
    /// Broken JSON, the wrong content type, unknown or missing fields and wrong types are each told
    /// apart, and none of them delivers anything.
    async fn malformed_sends_are_refused_precisely() {
        let server = Server::start().await;
        let alice = server.join("malformed", "alice").await;
        let bob = server.join("malformed", "bob").await;
        let to = bob.id.clone();

        let cases: Vec<(RequestBuilder, u16, &str)> = vec![
            (
                send(&alice)
                    .header("content-type", "application/json")
                    .body("{\"type\":"),
                400,
                "invalid_json",
            ),
            (
                send(&alice)
                    .header("content-type", "application/json")
                    .body("not json"),
                400,
                "invalid_json",
            ),
            (
                send(&alice)
                    .header("content-type", "text/plain")
                    .body("{\"type\":\"offer\"}"),
                415,
                "unsupported_media_type",
            ),
            (
                send(&alice)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("type=offer"),
                415,
                "unsupported_media_type",
            ),
            (send(&alice), 400, "empty_body"),
            (send(&alice).json(&json!({"to": to})), 422, "invalid_body"),
            (
                send(&alice).json(&json!({"type": "offer", "from": to})),
                422,
                "invalid_body",
            ),
            (send(&alice).json(&json!({"type": 7})), 422, "invalid_body"),
            (
                send(&alice).json(&json!({"type": "offer", "to": "not-a-uuid"})),
                422,
                "invalid_body",
            ),
            (send(&alice).json(&json!("offer")), 422, "invalid_body"),
            // serde would read a message from an array of its fields; a message is an object.
            (send(&alice).json(&json!([["chat"]])), 422, "invalid_body"),
            (send(&alice).json(&json!([["chat", null, 1]])), 422, "invalid_body"),
            (send(&alice).json(&json!([])), 422, "empty_batch"),
            (
                send(&alice).json(&vec![json!({"type": "c"}); 65]),
                422,
                "invalid_body",
            ),
            (
                send(&alice).json(&json!({"type": "Offer"})),
                422,
                "invalid_type",
            ),
            (
                send(&alice).json(&json!({"type": "9lives"})),
                422,
                "invalid_type",
            ),
            (
                send(&alice).json(&json!({"type": "x".repeat(33)})),
                422,
                "invalid_type",
            ),
            (
                send(&alice).json(&json!({"type": "join"})),
                422,
                "invalid_type",
            ),
            (
                send(&alice).json(&json!({"type": "leave"})),
                422,
                "invalid_type",
            ),
            (
                send(&alice).json(&json!({"type": "ready"})),
                422,
                "invalid_type",
            ),
            (
                send(&alice).json(&json!({"type": "reset"})),
                422,
                "invalid_type",
            ),
            (
                send(&alice).json(&json!({"type": "offer", "to": uuid::Uuid::new_v4()})),
                409,
                "unknown_recipient",
            ),
            (
                send(&alice).json(&json!({"type": "offer", "to": alice.id})),
                422,
                "self_recipient",
            ),
            // One bad message refuses the whole batch.
            (
                send(&alice).json(&json!([{"type": "offer", "to": to}, {"type": "reset", "to": to}])),
                422,
                "invalid_type",
            ),
            (
                send(&alice)
                    .json(&json!([{"type": "offer", "to": to}, {"type": "offer", "to": alice.id}])),
                422,
                "self_recipient",
            ),
        ];
        for (request, status, code) in cases {
            assert_eq!(refused(request).await, (status, code.to_owned()));
        }
        assert_mailbox_holds(&bob, 0).await;
        assert_mailbox_holds(&alice, 1).await; // Bob's join
    }
}

store_tests! {
    /// Bodies and messages over their limits are 413s, told apart.
    async fn oversize_bodies_and_messages_are_refused() {
        let server = Server::with(json!({"max_body_bytes": 4096, "max_message_bytes": 1024})).await;
        let alice = server.join("large", "alice").await;
        let bob = server.join("large", "bob").await;

        let big_body = json!({"type": "offer", "to": bob.id, "data": "x".repeat(5000)});
        assert_eq!(
            refused(send(&alice).json(&big_body)).await,
            (413, "body_too_large".into())
        );
        let big_message = json!([{"type": "offer", "to": bob.id, "data": 1}, {"type": "offer", "to": bob.id, "data": "x".repeat(1100)}]);
        assert_eq!(
            refused(send(&alice).json(&big_message)).await,
            (413, "message_too_large".into())
        );
        // Every message's type is checked before any size: a bad type after a message too
        // large is the error.
        let both = json!([{"type": "offer", "to": bob.id, "data": "x".repeat(1100)}, {"type": "Offer", "to": bob.id}]);
        assert_eq!(
            refused(send(&alice).json(&both)).await,
            (422, "invalid_type".into())
        );
        // Without a Content-Length (chunked), the limit is enforced as the body arrives.
        let chunks =
            futures_util::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
        let chunked = send(&alice)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunks));
        assert_eq!(refused(chunked).await, (413, "body_too_large".into()));
        // The same limit holds on every route, not only on the relay routes.
        let big_join = server
            .client
            .post(server.url("/api/rooms/large/peers"))
            .json(&json!({"name": "x".repeat(5000)}));
        assert_eq!(refused(big_join).await, (413, "body_too_large".into()));
        assert_mailbox_holds(&bob, 0).await;
        alice
            .send_ok(json!({"type": "offer", "to": bob.id, "data": "x".repeat(900)}))
            .await;
    }
}

store_tests! {
    /// Missing, unknown and misused tokens: 401 with `WWW-Authenticate: Bearer`, or 403 for the
    /// token of another peer of the room.
    async fn tokens_are_checked_on_every_peer_endpoint() {
        let server = Server::start().await;
        let alice = server.join("auth", "alice").await;
        let bob = server.join("auth", "bob").await;
        let peer = |p: &Peer, suffix: &str| format!("{}{suffix}", p.peer_path());
        let endpoints = [
            (Method::GET, peer(&alice, "/events")),
            (Method::GET, peer(&alice, "/messages?wait=0")),
            (Method::DELETE, peer(&alice, "")),
            (Method::POST, peer(&alice, "/leave")),
        ];
        for (method, path) in &endpoints {
            let url = server.url(path);
            let response = server
                .client
                .request(method.clone(), &url)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer",
                "{method} {path}"
            );
            assert_eq!(
                refused(server.client.request(method.clone(), &url)).await,
                (401, "missing_token".into())
            );
            let stranger = server
                .client
                .request(method.clone(), &url)
                .bearer_auth("0".repeat(64));
            assert_eq!(refused(stranger).await, (401, "invalid_token".into()));
            let schemeless = server
                .client
                .request(method.clone(), &url)
                .header("authorization", &alice.token);
            assert_eq!(refused(schemeless).await, (401, "missing_token".into()));
            let bobs = server
                .client
                .request(method.clone(), &url)
                .bearer_auth(&bob.token);
            assert_eq!(refused(bobs).await, (403, "wrong_peer".into()));
        }
        let anonymous = server
            .client
            .post(server.url("/api/rooms/auth/messages"))
            .json(&json!({"type": "x"}));
        assert_eq!(refused(anonymous).await, (401, "missing_token".into()));
        let forged = server
            .client
            .post(server.url("/api/rooms/auth/messages"))
            .bearer_auth("f".repeat(64))
            .json(&json!({"type": "x"}));
        assert_eq!(refused(forged).await, (401, "invalid_token".into()));
        // Nothing above removed Alice.
        assert_eq!(
            server.get_json("/api/rooms/auth").await.1["peers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}

store_tests! {
    /// Rooms, peers and routes that do not exist are 404s with distinct codes; malformed names and
    /// ids are 400s.
    async fn unknown_and_malformed_names_are_refused() {
        let server = Server::start().await;
        let alice = server.join("names", "alice").await;
        let ghost = uuid::Uuid::new_v4();
        let get = |path: String| {
            server
                .client
                .get(server.url(&path))
                .bearer_auth(&alice.token)
        };

        assert_eq!(
            refused(get("/api/rooms/nowhere".into())).await,
            (404, "room_not_found".into())
        );
        assert_eq!(
            refused(get(format!("/api/rooms/nowhere/peers/{ghost}/events"))).await,
            (404, "room_not_found".into())
        );
        assert_eq!(
            refused(get(format!("/api/rooms/names/peers/{ghost}/events"))).await,
            (404, "peer_not_found".into())
        );
        assert_eq!(
            refused(get(format!("/api/rooms/names/peers/{ghost}"))).await,
            (404, "peer_not_found".into())
        );
        assert_eq!(
            refused(get("/api/rooms/names/peers/not-a-uuid/events".into())).await,
            (400, "invalid_peer_id".into())
        );
        assert_eq!(
            refused(get("/api/nothing/here".into())).await,
            (404, "not_found".into())
        );
        let to_nowhere = server
            .client
            .post(server.url("/api/rooms/nowhere/messages"))
            .bearer_auth(&alice.token)
            .json(&json!({"type": "x"}));
        assert_eq!(refused(to_nowhere).await, (404, "room_not_found".into()));

        let join = |room: &str| {
            server
                .client
                .post(server.url(&format!("/api/rooms/{room}/peers")))
        };
        // ("." and ".." cannot be sent here: URL parsers resolve them; identity.rs tests them.)
        for bad in ["bad%20name", "caf%C3%A9", "a%2Fb", "a%00b", &"x".repeat(65)] {
            assert_eq!(
                refused(join(bad)).await,
                (400, "invalid_room_name".into()),
                "{bad}"
            );
        }
        assert_eq!(
            refused(join("ok").json(&json!({"name": "x".repeat(65)}))).await,
            (422, "invalid_name".into())
        );
        assert_eq!(
            refused(join("ok").json(&json!({"name": "a\u{0007}b"}))).await,
            (422, "invalid_name".into())
        );
        assert_eq!(
            refused(join("ok").json(&json!({"meta": [1, 2]}))).await,
            (422, "invalid_meta".into())
        );
        assert_eq!(
            refused(join("ok").json(&json!({"meta": {"x": "y".repeat(1100)}}))).await,
            (422, "invalid_meta".into())
        );
        assert_eq!(
            refused(join("ok").json(&json!({"nickname": "x"}))).await,
            (422, "invalid_body".into())
        );
        // Found by schemathesis: serde would read a join from an array of its fields.
        for body in [json!([null, null]), json!(["Alice"]), json!(7)] {
            assert_eq!(
                refused(join("ok").json(&body)).await,
                (422, "invalid_body".into()),
                "{body}"
            );
        }
        assert_eq!(
            server.get_json("/api/rooms/ok").await.0,
            404,
            "no refused join created a room"
        );
    }
}

store_tests! {
    /// Query parameters and `Last-Event-ID` that are not numbers are 400s.
    async fn malformed_resume_points_are_refused() {
        let server = Server::start().await;
        let alice = server.join("queries", "alice").await;
        let get = |suffix: &str| {
            server
                .client
                .get(server.url(&format!("{}{suffix}", alice.peer_path())))
                .bearer_auth(&alice.token)
        };
        for suffix in [
            "/messages?after=-1",
            "/messages?after=x",
            "/messages?wait=soon",
            "/messages?wait=-1",
            "/messages?wait=NaN",
            "/messages?wait=inf",
        ] {
            assert_eq!(
                refused(get(suffix)).await,
                (400, "invalid_query".into()),
                "{suffix}"
            );
        }
        assert_eq!(
            refused(get("/events").header("last-event-id", "seven")).await,
            (400, "invalid_last_event_id".into())
        );
        assert_eq!(
            refused(get("/events?last_event_id=-3")).await,
            (400, "invalid_last_event_id".into())
        );
        // Found by schemathesis: which of two values was meant cannot be known, and an empty
        // id is no id (EventSource sends no header rather than an empty one).
        assert_eq!(
            refused(get("/events?last_event_id=&last_event_id=2")).await,
            (400, "invalid_query".into())
        );
        assert_eq!(
            refused(get("/events?last_event_id=")).await,
            (400, "invalid_last_event_id".into())
        );
        // The header wins, but a malformed query is still a malformed request.
        assert_eq!(
            refused(get("/events?last_event_id=x").header("last-event-id", "1")).await,
            (400, "invalid_last_event_id".into())
        );
        assert_eq!(
            refused(get("/messages?after=1&after=2")).await,
            (400, "invalid_query".into())
        );
        assert_eq!(
            refused(get("/messages?wait=0&wait=1")).await,
            (400, "invalid_query".into())
        );
    }
}

store_tests! {
    /// A full room and a full server are 409s that create nothing.
    async fn full_rooms_and_servers_are_refused() {
        let server = Server::with(json!({"max_peers_per_room": 2, "max_rooms": 2})).await;
        server.join("one", "alice").await;
        server.join("one", "bob").await;
        let join = |room: &str| {
            server
                .client
                .post(server.url(&format!("/api/rooms/{room}/peers")))
        };
        assert_eq!(refused(join("one")).await, (409, "room_full".into()));
        assert_eq!(
            server.get_json("/api/rooms/one").await.1["peers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        server.join("two", "carol").await;
        assert_eq!(refused(join("three")).await, (409, "too_many_rooms".into()));
        assert_eq!(server.get_json("/api/rooms/three").await.0, 404);
        server.join("two", "dave").await; // existing rooms still take peers
    }
}

store_tests! {
    /// Over the send rate, a 429 with `Retry-After` says when to come back; a batch that does not
    /// fit is refused whole.
    async fn sending_too_fast_is_rate_limited() {
        let server = Server::with(json!({"send_rate_per_sec": 0.5, "send_burst": 3.0})).await;
        let alice = server.join("rate", "alice").await;
        let bob = server.join("rate", "bob").await;
        alice
            .send_ok(json!([{"type": "a", "to": bob.id}, {"type": "b", "to": bob.id}]))
            .await;
        let too_many =
            send(&alice).json(&json!([{"type": "c", "to": bob.id}, {"type": "d", "to": bob.id}]));
        let response = too_many.send().await.unwrap();
        assert_eq!(response.status(), 429);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=2).contains(&retry_after),
            "one token at 0.5/s: about 2 s, got {retry_after}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["retry_after"], retry_after);
        assert_mailbox_holds(&bob, 2).await;
        alice.send_ok(json!({"type": "c", "to": bob.id})).await; // the third token is still there
    }
}

store_tests! {
    /// A grab-bag of hostile requests: whatever they are, the answer is a JSON 4xx, never a 5xx.
    async fn no_request_causes_a_server_error() {
        let server = Server::with(json!({"poll_max_wait_secs": 0.1})).await;
        let alice = server.join("hostile", "alice").await;
        let url = |path: &str| server.url(path);
        let requests = vec![
            server.client.put(url("/api/rooms/hostile")),
            server.client.patch(url("/api/rooms/hostile/peers")),
            server
                .client
                .post(url("/api/rooms/hostile/messages"))
                .bearer_auth(&alice.token)
                .header("content-type", "application/json")
                .body(vec![0xff, 0xfe, 0x00]),
            server
                .client
                .post(url("/api/rooms/hostile/messages"))
                .bearer_auth(&alice.token)
                .header("content-type", "application/json")
                .body("[".repeat(10_000)),
            server
                .client
                .post(url("/api/rooms/hostile/messages"))
                .bearer_auth(&alice.token)
                .json(&json!({"type": "offer", "data": "\u{0000}\u{FFFF}"})),
            server
                .client
                .post(url("/api/rooms/hostile/peers"))
                .header("content-type", "application/json")
                .body("{\"name\": \"\\ud800\"}"),
            server
                .client
                .get(url(&format!(
                    "{}/messages?after=18446744073709551616",
                    alice.peer_path()
                )))
                .bearer_auth(&alice.token),
            server
                .client
                .get(url(&format!("{}/messages?wait=1e308", alice.peer_path())))
                .bearer_auth(&alice.token),
            server
                .client
                .get(url(&format!("{}/events", alice.peer_path())))
                .bearer_auth(&alice.token)
                .header("last-event-id", "99999999999999999999"),
            server
                .client
                .get(url(&format!("/api/rooms/{}", "a".repeat(5000)))),
        ];
        for request in requests {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            assert!(status < 500, "server error {status} for {}", response.url());
            if status >= 400 {
                let body: Value = response.json().await.expect("JSON error body");
                assert!(body["error"].is_string());
            }
        }

        // HEAD on the receiving routes would replace the live stream or acknowledge messages that
        // nobody reads: it is refused (405, they answer GET only), and Alice's stream below is
        // still the one delivering.
        let mut alice_events = alice.events(None).await;
        for route in ["events", "messages"] {
            let head = server
                .client
                .head(url(&format!("{}/{route}", alice.peer_path())))
                .bearer_auth(&alice.token)
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), 405, "HEAD {route}");
        }
        let bob = server.join("hostile", "bob").await;
        assert_eq!(alice_events.next_message().await["data"]["peer_id"], bob.id);

        // What no HTTP client library sends: an unknown method, a header value that is not ASCII, a path
        // that decodes to bytes that are not UTF-8.
        let raw_requests = [
            (
                "FROB /api/rooms/hostile/messages HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
                405,
            ),
            (
                "GET /api/rooms/hostile HTTP/1.1\r\nHost: x\r\nX-Bytes: \u{ff}\r\n\r\n".to_owned(),
                200,
            ),
            (
                format!(
                    "POST /api/rooms/%FF/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
                    alice.token
                ),
                400,
            ),
        ];
        for (request, expected) in raw_requests {
            let (status, body) = raw_exchange(&server, request.as_bytes()).await;
            assert_eq!(status, expected, "{request:?} got {body}");
            if status >= 400 {
                let body: Value = serde_json::from_str(&body).expect("JSON error body");
                assert!(body["error"].is_string(), "{body}");
            }
        }
    }
}

/// Writes `request` on a fresh connection (closed after one exchange) and returns the status and
/// body of the response.
async fn raw_exchange(server: &Server, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut request = request.to_vec();
    // One exchange: ask the server to close afterwards, so the response ends at EOF.
    let head_end = request
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a request head");
    request.splice(
        head_end + 2..head_end + 2,
        b"Connection: close\r\n".iter().copied(),
    );
    stream.write_all(&request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(common::EVENT_DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("the server answers and closes")
        .expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
