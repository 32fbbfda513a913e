//! The long-poll transport: at once when there is something, waiting when there is not, empty
//! when the wait ends, and `after` acknowledging what came before.

#[macro_use]
mod common;

use common::eventually::eventually;
use common::{Peer, Server, EVENT_DEADLINE};
use serde_json::json;

store_tests! {
    /// With messages after `after`, a poll returns them at once, with `last_id` to continue from.
    async fn a_poll_returns_waiting_messages_at_once() {
        let server = Server::start().await;
        let alice = server.join("immediate", "alice").await;
        let bob = server.join("immediate", "bob").await;
        alice
            .send_ok(json!([{"type": "offer", "to": bob.id}, {"type": "candidate", "to": bob.id}]))
            .await;

        // A wait far beyond the test's deadline: only an immediate answer passes.
        let (status, body) = tokio::time::timeout(EVENT_DEADLINE, bob.poll(0, 25.0))
            .await
            .expect("answered at once");
        assert_eq!(status, 200);
        assert_eq!(body["last_id"], 2);
        assert_eq!(body["reset"], false);
        let types: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["offer", "candidate"]);
    }
}

store_tests! {
    /// With nothing to return, a poll waits `wait` seconds and answers an empty list, keeping
    /// `last_id` at `after`.
    async fn an_idle_poll_times_out_empty() {
        let server = Server::start().await;
        let alice = server.join("idle", "alice").await;
        let (status, body) = alice.poll(0, 0.2).await;
        assert_eq!(
            (status, body),
            (200, json!({"messages": [], "last_id": 0, "reset": false}))
        );
    }
}

store_tests! {
    /// `wait` is capped by `poll_max_wait_secs`: a client asking for an hour gets the cap.
    async fn the_wait_is_capped_by_config() {
        let server = Server::with(json!({"poll_max_wait_secs": 0.2})).await;
        let alice = server.join("capped", "alice").await;
        let (status, body) = tokio::time::timeout(EVENT_DEADLINE, alice.poll(0, 3600.0))
            .await
            .expect("capped wait");
        assert_eq!((status, body["messages"].clone()), (200, json!([])));
    }
}

/// Waits until `peer`'s long-poll has reached the server and is waiting, as its server's
/// `signpost_polls_in_flight` gauge says (a poll counts once it has taken over as the peer's
/// poll, after acknowledging `after`). Not by polling again: a newer poll of the same peer would
/// end the one in flight.
async fn until_poll_in_flight(peer: &Peer) {
    eventually("the long-poll arrives", || async {
        let metrics = peer
            .client
            .get(peer.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text");
        metrics.contains("\nsignpost_polls_in_flight 1\n")
    })
    .await;
}

store_tests! {
    /// A poll with nothing to return waits, and answers as soon as a message arrives.
    async fn a_waiting_poll_answers_when_a_message_arrives() {
        let server = Server::with(json!({"replay_window": 0})).await;
        let alice = server.join("waiting", "alice").await;
        let bob = server.join("waiting", "bob").await;
        alice.send_ok(json!({"type": "hello", "to": bob.id})).await; // id 1, acknowledged below

        let waiting = tokio::spawn({
            let bob = bob.clone();
            async move { bob.poll(1, 25.0).await }
        });
        until_poll_in_flight(&bob).await;
        alice
            .send_ok(json!({"type": "offer", "to": bob.id, "data": "late"}))
            .await;

        let (status, body) = tokio::time::timeout(EVENT_DEADLINE, waiting)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["messages"][0]["data"], "late");
        assert_eq!(body["messages"][0]["id"], 2);
        assert_eq!(body["last_id"], 2);
    }
}

store_tests! {
    /// `after` acknowledges: a poll may repeat (a lost response is simply asked for again) until
    /// the client moves `after` past it; messages acknowledged and beyond the replay window are gone,
    /// and asking for them again answers `reset`.
    async fn after_acknowledges_and_expired_asks_reset() {
        let server = Server::with(json!({"replay_window": 1})).await;
        let alice = server.join("ack", "alice").await;
        let bob = server.join("ack", "bob").await;
        alice.send_ok(json!([{"type": "a", "to": bob.id}, {"type": "b", "to": bob.id}, {"type": "c", "to": bob.id}])).await;

        let (_, first) = bob.poll(0, 0.0).await;
        let (_, again) = bob.poll(0, 0.0).await;
        assert_eq!(first, again, "unacknowledged messages are returned again");

        let (_, rest) = bob.poll(2, 0.0).await; // acknowledges 1 and 2
        assert_eq!(rest["messages"].as_array().unwrap().len(), 1);
        let (_, expired) = bob.poll(0, 0.0).await;
        assert_eq!(expired["reset"], true);
        assert_eq!(expired["reset_reason"], "expired");
        let ids: Vec<u64> = expired["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ids,
            [2, 3],
            "the replay window (1) keeps 2; 3 is undelivered"
        );
        assert_eq!(expired["last_id"], 3);

        let (_, ahead) = bob.poll(50, 0.0).await;
        assert_eq!(
            (
                ahead["reset"].clone(),
                ahead["reset_reason"].clone(),
                ahead["last_id"].clone()
            ),
            (json!(true), json!("ahead"), json!(3))
        );
    }
}

store_tests! {
    /// A long-poll in flight when the server shuts down returns (empty) instead of hanging.
    async fn shutdown_answers_a_waiting_poll() {
        let server = Server::with(json!({"replay_window": 0})).await;
        let alice = server.join("closing", "alice").await;
        let bob = server.join("closing", "bob").await;
        alice.send_ok(json!({"type": "hello", "to": bob.id})).await;
        let waiting = tokio::spawn({
            let bob = bob.clone();
            async move { bob.poll(1, 25.0).await }
        });
        until_poll_in_flight(&bob).await;

        server.begin_shutdown();
        let (status, body) = tokio::time::timeout(EVENT_DEADLINE, waiting)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!((status, body["messages"].clone()), (200, json!([])));
        server.stop().await;
    }
}
