//! Delivery semantics: who receives what, in which order, and what happens to what is not read.

#[macro_use]
mod common;

use std::collections::HashMap;

use common::Server;
use serde_json::{json, Value};

store_tests! {
    /// A message with `to` reaches that peer only, with the sender's id as `from` (the server
    /// decides it) and its `data` byte for byte.
    async fn a_targeted_message_reaches_only_its_recipient() {
        let server = Server::start().await;
        let alice = server.join("targeted", "alice").await;
        let bob = server.join("targeted", "bob").await;
        let carol = server.join("targeted", "carol").await;

        let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "n": 1.5e3});
        alice
            .send_ok(json!({"type": "offer", "to": bob.id, "data": offer}))
            .await;
        carol.send_ok(json!({"type": "ping", "to": alice.id})).await;

        let (_, inbox) = bob.poll(1, 0.0).await; // id 1 is Carol's join
        let messages = inbox["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["from"], alice.id);
        assert_eq!(messages[0]["type"], "offer");
        assert_eq!(messages[0]["data"], offer);

        let (_, inbox) = carol.poll(0, 0.0).await;
        assert_eq!(inbox["messages"], json!([]), "Carol was not addressed");
    }
}

store_tests! {
    /// A message without `to` reaches every other peer of the room, and not the sender.
    async fn a_broadcast_reaches_every_other_peer() {
        let server = Server::start().await;
        let alice = server.join("broadcast", "alice").await;
        let bob = server.join("broadcast", "bob").await;
        let carol = server.join("broadcast", "carol").await;
        let mut bob_events = bob.events(None).await;
        let mut carol_events = carol.events(None).await;

        alice
            .send_ok(json!({"type": "hello", "data": "everyone"}))
            .await;

        assert_eq!(bob_events.next_message().await["type"], "join"); // Carol
        for events in [&mut bob_events, &mut carol_events] {
            let hello = events.next_message().await;
            assert_eq!(
                (hello["type"].as_str(), hello["from"].as_str()),
                (Some("hello"), Some(alice.id.as_str()))
            );
            assert_eq!(hello["data"], "everyone");
        }
        let (_, alice_inbox) = alice.poll(0, 0.0).await;
        let types: Vec<&str> = alice_inbox["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["join", "join"],
            "the sender does not receive its own broadcast"
        );
    }
}

store_tests! {
    /// One request can carry many messages (trickle ICE): all are accepted, and they arrive in
    /// array order with consecutive ids.
    async fn a_batch_arrives_whole_and_in_order() {
        let server = Server::start().await;
        let alice = server.join("batch", "alice").await;
        let bob = server.join("batch", "bob").await;
        let candidates: Vec<Value> = (0..64)
            .map(|i| json!({"type": "candidate", "to": bob.id, "data": {"candidate": format!("candidate:{i}"), "seq": i}}))
            .collect();

        let response = alice.send(Value::Array(candidates)).await;
        assert_eq!(response.status(), 202);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"accepted": 64})
        );

        let (_, inbox) = bob.poll(0, 0.0).await;
        let messages = inbox["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 64);
        for (i, message) in messages.iter().enumerate() {
            assert_eq!(message["id"], i as u64 + 1, "ids are consecutive");
            assert_eq!(message["data"]["seq"], i as u64, "array order is kept");
        }
    }
}

store_tests! {
    /// A mailbox exists from the moment a peer joins: what is sent before it listens waits for it.
    async fn messages_wait_until_the_peer_listens() {
        let server = Server::start().await;
        let alice = server.join("waiting", "alice").await;
        let bob = server.join("waiting", "bob").await;
        alice
            .send_ok(json!({"type": "offer", "to": bob.id, "data": 1}))
            .await;
        alice
            .send_ok(json!({"type": "candidate", "to": bob.id, "data": 2}))
            .await;

        let mut bob_events = bob.events(None).await;
        let first = bob_events.next_message().await;
        let second = bob_events.next_message().await;
        assert_eq!(
            (first["id"].as_u64(), first["data"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(
            (second["id"].as_u64(), second["data"].as_u64()),
            (Some(2), Some(2))
        );
    }
}

store_tests! {
    /// A backlog larger than what a store hands over in one read (the Redis store reads 256 at
    /// a time) reaches a stream that opens on it at once: the stream reads on while the mailbox
    /// holds more, and does not wait for a wake-up or a heartbeat that nothing will send.
    async fn a_long_backlog_arrives_without_waiting() {
        const BACKLOG: u64 = 700;
        let server = Server::with(json!({
            "heartbeat_secs": 600.0, "send_rate_per_sec": 1e6, "send_burst": 1e6
        }))
        .await;
        let alice = server.join("backlog", "alice").await;
        let bob = server.join("backlog", "bob").await;
        let messages: Vec<Value> = (1..=BACKLOG)
            .map(|seq| json!({"type": "candidate", "to": bob.id, "data": seq}))
            .collect();
        for batch in messages.chunks(64) {
            alice.send_ok(Value::Array(batch.to_vec())).await;
        }

        let mut bob_events = bob.events(None).await;
        for seq in 1..=BACKLOG {
            let message = bob_events.next_message().await;
            assert_eq!(
                (message["id"].as_u64(), message["data"].as_u64()),
                (Some(seq), Some(seq))
            );
        }
    }
}

store_tests! {
    /// Many senders at once: every message arrives exactly once, ids have no gaps, and each
    /// sender's messages arrive in the order it sent them.
    async fn concurrent_senders_keep_per_sender_order() {
        const SENDERS: usize = 8;
        const PER_SENDER: u64 = 150;
        let server = Server::with(json!({"send_rate_per_sec": 1e6, "send_burst": 1e6})).await;
        let receiver = server.join("crowd", "receiver").await;
        let mut events = receiver.events(None).await;
        let mut senders = Vec::new();
        for i in 0..SENDERS {
            senders.push(server.join("crowd", &format!("sender-{i}")).await);
        }

        let tasks: Vec<_> = senders
            .iter()
            .cloned()
            .map(|sender| {
                let to = receiver.id.clone();
                tokio::spawn(async move {
                    for seq in 0..PER_SENDER {
                        sender
                            .send_ok(json!({"type": "seq", "to": to, "data": seq}))
                            .await;
                    }
                })
            })
            .collect();

        let mut next_seq: HashMap<String, u64> = HashMap::new();
        let mut expected_id = 1;
        let total = SENDERS as u64 * PER_SENDER;
        let mut received = 0;
        while received < total {
            let message = events.next_message().await;
            assert_eq!(message["id"], expected_id, "no gap and no duplicate");
            expected_id += 1;
            if message["type"] == "join" {
                continue;
            }
            let from = message["from"].as_str().unwrap().to_owned();
            let seq = message["data"].as_u64().unwrap();
            let next = next_seq.entry(from).or_insert(0);
            assert_eq!(
                seq, *next,
                "a sender's messages arrive in the order it sent them"
            );
            *next += 1;
            received += 1;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(next_seq.values().all(|&n| n == PER_SENDER));
    }
}

store_tests! {
    /// A peer that keeps reading is never cut off for the volume it receives: far more messages
    /// than the mailbox capacity and the replay window together all arrive, gaplessly.
    async fn a_reading_peer_is_never_cut_off_for_volume() {
        let server = Server::with(json!({
            "mailbox_capacity": 16, "replay_window": 4, "send_rate_per_sec": 1e6, "send_burst": 1e6
        }))
        .await;
        let alice = server.join("volume", "alice").await;
        let bob = server.join("volume", "bob").await;
        let mut bob_events = bob.events(None).await;

        for round in 0..50u64 {
            let batch: Vec<Value> = (0..8)
                .map(|i| json!({"type": "chunk", "to": bob.id, "data": round * 8 + i}))
                .collect();
            alice.send_ok(Value::Array(batch)).await;
            for i in 0..8 {
                let message = bob_events.next_message().await;
                assert_eq!(message["id"], round * 8 + i + 1);
                assert_eq!(message["data"], round * 8 + i);
            }
        }
        let (_, room) = server.get_json("/api/rooms/volume").await;
        assert_eq!(
            room["peers"].as_array().unwrap().len(),
            2,
            "Bob was never evicted"
        );
    }
}

store_tests! {
    /// A peer that stops reading cannot hold the room hostage: once its undelivered backlog is
    /// full, it is evicted, the others hear `leave` with reason `evicted`, the sender's request
    /// still succeeds, and the stuck peer's next request says it is gone.
    async fn a_peer_that_stops_reading_is_evicted_visibly() {
        let server = Server::with(json!({
            "mailbox_capacity": 5, "peer_timeout_secs": 60.0, "send_rate_per_sec": 1e6, "send_burst": 1e6
        }))
        .await;
        let alice = server.join("stuck", "alice").await;
        let mut alice_events = alice.events(None).await;
        let bob = server.join("stuck", "bob").await;
        assert_eq!(alice_events.next_message().await["type"], "join");

        // Bob never reads. Five messages fill his backlog; the sixth evicts him.
        for seq in 0..6 {
            alice
                .send_ok(json!({"type": "offer", "to": bob.id, "data": seq}))
                .await;
        }
        let leave = alice_events.next_message().await;
        assert_eq!(leave["type"], "leave");
        assert_eq!(
            leave["data"],
            json!({"peer_id": bob.id, "reason": "evicted"})
        );

        let (status, body) = bob.poll(0, 0.0).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("peer_not_found"))
        );
        let response = alice.send(json!({"type": "offer", "to": bob.id})).await;
        assert_eq!(response.status(), 409, "Bob is no longer a recipient");
    }
}
