//! The Server-Sent Events transport: framing, resume, reset, one stream per peer, shutdown.

#[macro_use]
mod common;

use common::read_until::read_until;
use common::{Events, Peer, Server};
use serde_json::{json, Value};

store_tests! {
    /// The stream is `text/event-stream` with the headers that stop caches and proxies buffering
    /// it; it opens with `ready` (no id), frames each message as `id:`, `event:` and one `data:`
    /// line holding the envelope, and sends heartbeat comments.
    async fn the_stream_is_framed_as_documented() {
        let server = Server::with(json!({"heartbeat_secs": 0.2})).await;
        let alice = server.join("framing", "alice").await;
        let bob = server.join("framing", "bob").await;
        alice
            .send_ok(json!({"type": "offer", "to": bob.id, "data": {"sdp": "v=0\r\n"}}))
            .await;

        let mut response = server
            .client
            .get(server.url(&format!("{}/events?token={}", bob.peer_path(), bob.token)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");

        let text = read_until(&mut response, "\n:\n").await;
        let ready = format!(
            "event:ready\ndata:{{\"peer_id\":\"{}\",\"last_id\":1}}\n\n",
            bob.id
        );
        assert!(
            text.starts_with(&ready),
            "ready comes first, without an id: {text:?}"
        );
        let offer = format!(
            "id:1\nevent:offer\ndata:{{\"id\":1,\"from\":\"{}\",\"type\":\"offer\",\"data\":{{\"sdp\":\"v=0\\r\\n\"}}}}\n\n",
            alice.id
        );
        assert!(
            text.contains(&offer),
            "the message is framed exactly: {text:?}"
        );
        // A heartbeat is a comment line; more keep coming while the stream is idle.
        let more = read_until(&mut response, "\n:\n").await;
        assert!(more.contains(':'));
    }
}

/// Alice and Bob join `room`; Alice sends Bob `count` candidates (data 1..=count), each of which
/// Bob's stream receives; then the network cuts Bob's stream. Returns (alice, bob).
async fn deliver_then_cut(server: &Server, room: &str, count: u64) -> (Peer, Peer) {
    let alice = server.join(room, "alice").await;
    let bob = server.join(room, "bob").await;
    let mut stream = bob.events(None).await;
    for seq in 1..=count {
        alice
            .send_ok(json!({"type": "candidate", "to": bob.id, "data": seq}))
            .await;
        assert_eq!(stream.next_message().await["data"], seq);
    }
    drop(stream);
    (alice, bob)
}

store_tests! {
    /// A stream cut after message 3 resumes with `Last-Event-ID: 3`: what was sent meanwhile is
    /// replayed, then the stream goes on live, with nothing lost and nothing repeated.
    async fn a_cut_stream_resumes_from_last_event_id() {
        let server = Server::start().await;
        let (alice, bob) = deliver_then_cut(&server, "resume", 3).await;

        for seq in 4..=6 {
            alice
                .send_ok(json!({"type": "candidate", "to": bob.id, "data": seq}))
                .await;
        }
        let mut stream = bob.events(Some(3)).await;
        for seq in 4..=6u64 {
            let message = stream.next_message().await;
            assert_eq!(
                (message["id"].as_u64(), message["data"].as_u64()),
                (Some(seq), Some(seq))
            );
        }
        alice
            .send_ok(json!({"type": "candidate", "to": bob.id, "data": 7}))
            .await;
        let live = stream.next_message().await;
        assert_eq!(
            (live["id"].as_u64(), live["data"].as_u64()),
            (Some(7), Some(7)),
            "no duplicate"
        );
    }
}

store_tests! {
    /// Messages the server wrote but the client never saw (a proxy swallowed them before the cut)
    /// are replayed from the replay window; `?last_event_id=` works like the header.
    async fn written_but_unseen_messages_are_replayed() {
        let server = Server::start().await;
        let (_alice, bob) = deliver_then_cut(&server, "unseen", 4).await;

        // The client only saw up to 2.
        let response = server
            .client
            .get(server.url(&format!(
                "{}/events?token={}&last_event_id=2",
                bob.peer_path(),
                bob.token
            )))
            .send()
            .await
            .unwrap();
        let mut events = Events::from_response(response);
        assert_eq!(events.next().await.event, "ready");
        for seq in 3..=4 {
            assert_eq!(events.next_message().await["data"], seq);
        }
    }
}

store_tests! {
    /// Resuming from an id whose successors were dropped from the replay window gives an explicit
    /// `reset` (no id), then everything still held: the client knows it must renegotiate.
    async fn resuming_past_the_replay_window_resets() {
        let server = Server::with(json!({"replay_window": 2})).await;
        let (_alice, bob) = deliver_then_cut(&server, "expired", 6).await;
        // The cut stream tells the store it delivered 6 after writing it: on Redis that is a
        // round trip the next request can overtake. A client that saw 6 resumes with
        // `Last-Event-ID: 6`, which acknowledges it as the request opens: 5 and 6 are then the
        // two delivered messages the window keeps, whichever store it is.
        drop(bob.events(Some(6)).await);

        let mut stream = bob.events(Some(1)).await;
        let reset = stream.next().await;
        assert_eq!(reset.event, "reset");
        assert_eq!(reset.id, "", "reset has no id");
        let data: Value = serde_json::from_str(&reset.data).unwrap();
        assert_eq!(data, json!({"reason": "expired", "last_id": 6}));
        assert_eq!(
            stream.next_message().await["id"],
            5,
            "the replay window holds 5 and 6"
        );
        assert_eq!(stream.next_message().await["id"], 6);

        let mut stream = bob.events(Some(99)).await;
        let reset = stream.next().await;
        let data: Value = serde_json::from_str(&reset.data).unwrap();
        assert_eq!(
            (reset.event.as_str(), data["reason"].as_str()),
            ("reset", Some("ahead"))
        );
    }
}

store_tests! {
    /// One live stream per peer: opening a second one ends the first, and messages go to the new.
    async fn a_second_stream_replaces_the_first() {
        let server = Server::start().await;
        let alice = server.join("replace", "alice").await;
        let bob = server.join("replace", "bob").await;
        let mut first = bob.events(None).await;
        let mut second = bob.events(None).await;
        assert!(first.ends().await, "the first stream ends");

        alice.send_ok(json!({"type": "offer", "to": bob.id})).await;
        assert_eq!(second.next_message().await["type"], "offer");
    }
}

store_tests! {
    /// A peer that leaves has its stream ended by the server.
    async fn leaving_ends_the_stream() {
        let server = Server::start().await;
        let alice = server.join("bye", "alice").await;
        let mut stream = alice.events(None).await;
        assert_eq!(alice.leave().await, 204);
        assert!(stream.ends().await);
    }
}

store_tests! {
    /// On shutdown, open streams end promptly instead of holding the server open.
    async fn shutdown_ends_open_streams() {
        let server = Server::start().await;
        let alice = server.join("shutdown", "alice").await;
        let mut stream = alice.events(None).await;
        server.begin_shutdown();
        assert!(stream.ends().await);
        server.stop().await;
    }
}
