//! The byte bounds: what a client can make the server hold is bounded in bytes (a mailbox's
//! backlog, its replay window, what one sender's address and the whole server hold), and a
//! long-poll answer is bounded in bytes with one poll in flight per peer.
//!
//! Every message here has an envelope of exactly [`ENVELOPE`] bytes, so that the small limits
//! each test sets say how many messages fit.

#[macro_use]
mod common;

use common::eventually::eventually;
use common::{answer, Peer, Server, EVENT_DEADLINE};
use serde_json::{json, Value};

/// The envelope of [`big`] as stored: `{"from":"<36>","type":"big","data":"<700 x>"}`.
const ENVELOPE: usize = r#"{"from":"","type":"big","data":""}"#.len() + 36 + 700;

/// A message to `to` whose envelope is [`ENVELOPE`] bytes.
fn big(to: &Peer) -> Value {
    json!({"type": "big", "to": to.id, "data": "x".repeat(700)})
}

/// Small limits every test starts from: messages up to 1 KiB, so that bounds of a few KiB are
/// valid, and no send rate in the way.
fn limits(extra: Value) -> Value {
    let mut settings = json!({
        "max_message_bytes": 1024,
        "send_rate_per_sec": 1e6,
        "send_burst": 1e6,
        "peer_timeout_secs": 60.0,
    });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    settings
}

/// The ids of a poll answer's messages.
fn ids(body: &Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| message["id"].as_u64().unwrap())
        .collect()
}

/// Sends `body` as `peer` and returns the raw answer.
async fn send(peer: &Peer, body: Value) -> common::Answer {
    answer(
        peer.client
            .post(peer.url(&format!("/api/rooms/{}/messages", peer.room)))
            .bearer_auth(&peer.token)
            .json(&body),
    )
    .await
}

/// Waits until `peer`'s server counts `count` polls in flight.
async fn until_polls_in_flight(peer: &Peer, count: u32) {
    let sample = format!("\nsignpost_polls_in_flight {count}\n");
    let what = format!("polls in flight reach {count}");
    eventually(&what, || async {
        let metrics = peer
            .client
            .get(peer.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text");
        metrics.contains(&sample)
    })
    .await;
}

store_tests! {
    /// A poll answer carries at most `poll_max_bytes` of messages; its `last_id` is the last id
    /// it carries, and the next poll from there returns the rest, no id skipped.
    async fn a_poll_answer_stops_at_poll_max_bytes() {
        const { assert!(2 * ENVELOPE <= 2048 && 3 * ENVELOPE > 2048) };
        let server = Server::with(limits(json!({"poll_max_bytes": 2048}))).await;
        let alice = server.join("paged", "alice").await;
        let bob = server.join("paged", "bob").await;
        let batch: Vec<Value> = (0..5).map(|_| big(&bob)).collect();
        alice.send_ok(Value::Array(batch)).await;

        let mut after = 0;
        let mut pages = Vec::new();
        while after < 5 {
            let (status, body) = bob.poll(after, 0.0).await;
            assert_eq!(status, 200);
            assert_eq!(body["reset"], false);
            let page = ids(&body);
            assert_eq!(body["last_id"], *page.last().expect("a page is never empty"));
            after = body["last_id"].as_u64().unwrap();
            pages.push(page);
        }
        assert_eq!(pages, [vec![1, 2], vec![3, 4], vec![5]]);
    }
}

store_tests! {
    /// A stream reads a backlog larger than `poll_max_bytes` in bounded reads and still
    /// delivers all of it, in order and without a gap.
    async fn a_stream_reads_a_large_backlog_in_bounded_reads() {
        let server = Server::with(limits(json!({"poll_max_bytes": 2048}))).await;
        let alice = server.join("streamed", "alice").await;
        let bob = server.join("streamed", "bob").await;
        let batch: Vec<Value> = (0..7).map(|_| big(&bob)).collect();
        alice.send_ok(Value::Array(batch)).await;

        let mut events = bob.events(None).await;
        for id in 1..=7 {
            assert_eq!(events.next_message().await["id"], id);
        }
    }
}

store_tests! {
    /// One poll in flight per peer: a newer poll ends an older one at once, which answers 200
    /// with no messages and `last_id` = its `after`; the newer one goes on waiting and gets
    /// what comes.
    async fn a_newer_poll_ends_the_older_one() {
        let server = Server::with(limits(json!({}))).await;
        let alice = server.join("takeover", "alice").await;
        let bob = server.join("takeover", "bob").await;
        alice.send_ok(json!({"type": "hello", "to": bob.id})).await; // id 1

        let older = tokio::spawn({
            let bob = bob.clone();
            async move { bob.poll(1, 25.0).await }
        });
        until_polls_in_flight(&bob, 1).await;
        let newer = tokio::spawn({
            let bob = bob.clone();
            async move { bob.poll(1, 25.0).await }
        });
        let (status, body) = tokio::time::timeout(EVENT_DEADLINE, older)
            .await
            .expect("the older poll answered at once")
            .unwrap();
        assert_eq!(
            (status, body),
            (200, json!({"messages": [], "last_id": 1, "reset": false}))
        );

        until_polls_in_flight(&bob, 1).await;
        alice.send_ok(json!({"type": "late", "to": bob.id})).await;
        let (status, body) = tokio::time::timeout(EVENT_DEADLINE, newer)
            .await
            .expect("the newer poll answered")
            .unwrap();
        assert_eq!((status, ids(&body)), (200, vec![2]));
    }
}

store_tests! {
    /// A push that would take a mailbox's undelivered bytes past `mailbox_max_bytes` evicts its
    /// peer, as a full `mailbox_capacity` does, however few messages it holds.
    async fn a_mailbox_past_its_bytes_evicts() {
        const { assert!(2 * ENVELOPE <= 2048 && 3 * ENVELOPE > 2048) };
        let server = Server::with(limits(json!({"mailbox_max_bytes": 2048}))).await;
        let alice = server.join("heavy", "alice").await;
        let mut alice_events = alice.events(None).await;
        let bob = server.join("heavy", "bob").await;
        assert_eq!(alice_events.next_message().await["type"], "join");

        // Bob never reads: two messages fit, the third evicts him.
        for _ in 0..3 {
            alice.send_ok(big(&bob)).await;
        }
        let leave = alice_events.next_message().await;
        assert_eq!(
            (leave["type"].clone(), leave["data"].clone()),
            (json!("leave"), json!({"peer_id": bob.id, "reason": "evicted"}))
        );
        let (status, _) = bob.poll(0, 0.0).await;
        assert_eq!(status, 404);
    }
}

store_tests! {
    /// Delivered messages are kept for resumes up to `replay_window_bytes`: the newest that fit
    /// stay, and a resume from before them resets instead of skipping.
    async fn the_replay_window_is_trimmed_by_bytes() {
        const { assert!(2 * ENVELOPE <= 1600 && 3 * ENVELOPE > 1600) };
        let server = Server::with(limits(json!({"replay_window_bytes": 1600}))).await;
        let alice = server.join("window", "alice").await;
        let bob = server.join("window", "bob").await;
        let batch: Vec<Value> = (0..4).map(|_| big(&bob)).collect();
        alice.send_ok(Value::Array(batch)).await;
        let (_, body) = bob.poll(0, 0.0).await;
        assert_eq!(ids(&body), [1, 2, 3, 4]);

        // Acknowledging all four leaves the newest two in the window.
        let (_, body) = bob.poll(4, 0.0).await;
        assert_eq!(ids(&body), Vec::<u64>::new());
        let (_, body) = bob.poll(2, 0.0).await;
        assert_eq!((body["reset"].clone(), ids(&body)), (json!(false), vec![3, 4]));
        let (_, body) = bob.poll(1, 0.0).await;
        assert_eq!(
            (body["reset"].clone(), body["reset_reason"].clone(), ids(&body)),
            (json!(true), json!("expired"), vec![3, 4])
        );
    }
}

store_tests! {
    /// A send that would take the bytes held for the sender's address past
    /// `client_max_held_bytes` is refused whole (429 `too_many_bytes_held`, `Retry-After`) and
    /// delivers nothing; once its recipient has read and the replay window let go, it succeeds.
    async fn a_sender_past_its_held_bytes_is_refused_until_they_are_read() {
        const { assert!(2 * ENVELOPE <= 2048 && 3 * ENVELOPE > 2048) };
        let server = Server::with(limits(json!({
            "client_max_held_bytes": 2048, "replay_window_bytes": 0
        })))
        .await;
        let alice = server.join("hoarder", "alice").await;
        let bob = server.join("hoarder", "bob").await;
        alice.send_ok(json!([big(&bob), big(&bob)])).await;

        let refused = send(&alice, big(&bob)).await;
        assert_eq!(
            (refused.status, refused.body["error"].as_str()),
            (429, Some("too_many_bytes_held"))
        );
        assert_eq!(refused.retry_after.as_deref(), Some("1"));
        // Whole: a batch whose first message would fit is refused with its second.
        let refused = send(&alice, json!([{"type": "small", "to": bob.id}, big(&bob)])).await;
        assert_eq!(refused.status, 429);
        let (_, body) = bob.poll(0, 0.0).await;
        assert_eq!(ids(&body), [1, 2], "nothing of the refused sends arrived");

        // Bob acknowledges both; with no replay window they leave the mailbox.
        bob.poll(2, 0.0).await;
        let accepted = send(&alice, big(&bob)).await;
        assert_eq!(accepted.status, 202);
        let (_, body) = bob.poll(2, 0.0).await;
        assert_eq!(ids(&body), [3]);
    }
}

store_tests! {
    /// What a stream delivered stops counting against its sender's bytes soon after, though
    /// nothing more comes for the stream to read: the acknowledgement that would ride on the
    /// next read goes on its own (src/front/events.rs, ACK_DELAY), not at the next heartbeat.
    async fn a_stream_that_delivered_frees_its_senders_bytes_with_nothing_more_to_read() {
        const { assert!(2 * ENVELOPE <= 2048 && 3 * ENVELOPE > 2048) };
        let server = Server::with(limits(json!({
            "client_max_held_bytes": 2048, "replay_window_bytes": 0,
            // Far past the wait below: no heartbeat's read carries the acknowledgement.
            "heartbeat_secs": 600.0,
        })))
        .await;
        let alice = server.join("streamed", "alice").await;
        let bob = server.join("streamed", "bob").await;
        alice.send_ok(json!([big(&bob), big(&bob)])).await;
        assert_eq!(send(&alice, big(&bob)).await.status, 429, "two envelopes fill the bound");
        let mut events = bob.events(None).await;
        for id in [1, 2] {
            assert_eq!(events.next_message().await["id"], id);
        }

        eventually("the delivered bytes are released", || async {
            send(&alice, big(&bob)).await.status == 202
        })
        .await;
        assert_eq!(events.next_message().await["id"], 3);
    }
}

store_tests! {
    /// A send that would take the bytes held in all mailboxes past `max_held_bytes` is refused
    /// whole with 503 `server_full` and `Retry-After`, and delivers nothing.
    async fn a_send_past_max_held_bytes_is_refused_with_server_full() {
        // Alice's mailbox holds Bob's `join` (well under 300 bytes) besides the two messages.
        const { assert!(2 * ENVELOPE + 300 <= 2048 && 3 * ENVELOPE > 2048) };
        let server = Server::with(limits(json!({"max_held_bytes": 2048}))).await;
        let alice = server.join("crowded", "alice").await;
        let bob = server.join("crowded", "bob").await;
        alice.send_ok(json!([big(&bob), big(&bob)])).await;

        let refused = send(&alice, big(&bob)).await;
        assert_eq!(
            (refused.status, refused.body["error"].as_str()),
            (503, Some("server_full"))
        );
        assert_eq!(refused.retry_after.as_deref(), Some("1"));
        assert_eq!(refused.body["retry_after"], 1);
        let (_, body) = bob.poll(0, 0.0).await;
        assert_eq!(ids(&body), [1, 2], "nothing of the refused send arrived");
    }
}
