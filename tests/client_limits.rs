//! Limits one client address cannot get past: its join rate and the live peers it holds, so
//! that no single client can lock others out of an open server; and whose address a request is,
//! behind trusted proxies or not. Other clients are played by other loopback source addresses
//! (all of 127.0.0.0/8 is local).

#[macro_use]
mod common;

use std::net::IpAddr;

use common::Server;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

/// A client whose connections come from `source`.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// A join's status, `Retry-After` and body.
async fn join(
    server: &Server,
    client: &reqwest::Client,
    room: &str,
    forwarded_for: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut request = client
        .post(server.url(&format!("/api/rooms/{room}/peers")))
        .json(&json!({}));
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("X-Forwarded-For", forwarded_for);
    }
    let answer = common::answer(request).await;
    let retry_after = answer
        .retry_after
        .map(|seconds| seconds.parse().expect("Retry-After in whole seconds"));
    (answer.status, retry_after, answer.body)
}

store_tests! {
    /// The flood from the issue, on the default settings: one address joining fresh rooms as fast
    /// as it can (16 requests in flight) is held to its burst and then refused with 429
    /// `too_many_joins` and `Retry-After`; the room table is far from full, and another address
    /// still joins.
    async fn a_flood_from_one_address_is_limited_and_others_still_join() {
        let server = Server::start().await;
        let flooder = client_from("127.0.0.1");
        let started = std::time::Instant::now();
        // Concurrent, as a flood is, so that however slow this machine is, the joins come far
        // faster than the 20 a second the bucket refills.
        let answers: Vec<_> = stream::iter(0..600)
            .map(|n| {
                let (server, flooder) = (&server, &flooder);
                async move { join(server, flooder, &format!("flood-{n}"), None).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let joined = answers.iter().filter(|(status, _, _)| *status == 201).count() as u32;
        let refusals: Vec<_> = answers
            .into_iter()
            .filter(|(status, _, _)| *status != 201)
            .collect();
        assert!(!refusals.is_empty(), "the flood is refused at some point");
        for (status, retry_after, body) in refusals {
            assert_eq!((status, body["error"].as_str()), (429, Some("too_many_joins")));
            assert!(
                retry_after.is_some_and(|seconds| seconds >= 1),
                "Retry-After"
            );
            assert_eq!(body["retry_after"], json!(retry_after.unwrap()));
        }
        // A burst of 100, plus 20 a second for however long the flood took.
        let allowed = 100.0 + 20.0 * started.elapsed().as_secs_f64() + 1.0;
        assert!(
            f64::from(joined) <= allowed && joined >= 100,
            "{joined} of the flood's joins accepted"
        );
        let (status, _, body) = join(&server, &client_from("127.0.0.2"), "bystander", None).await;
        assert_eq!(status, 201, "another address joins: {body}");
    }
}

store_tests! {
    /// `max_peers_per_client`: an address holding its limit of live peers is refused with 429
    /// `too_many_peers_for_client` and `Retry-After`; a peer leaving frees a place; other addresses
    /// are not affected.
    async fn live_peers_per_address_are_limited() {
        let server = Server::with(json!({"max_peers_per_client": 3})).await;
        let client = client_from("127.0.0.1");
        let mut peers = Vec::new();
        for n in 0..3 {
            let (status, _, body) = join(&server, &client, &format!("held-{n}"), None).await;
            assert_eq!(status, 201, "{body}");
            peers.push(body);
        }
        let (status, retry_after, body) = join(&server, &client, "held-0", None).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"], "too_many_peers_for_client");
        assert_eq!(retry_after, Some(30), "Retry-After: the peer timeout");
        assert_eq!(
            server.get_json("/api/rooms/held-0").await.1["peers"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "the refused join changed nothing"
        );
        let (status, _, _) = join(&server, &client_from("127.0.0.3"), "held-0", None).await;
        assert_eq!(status, 201, "another address joins");

        let first = &peers[0];
        let leave = client
            .delete(server.url(first["leave_url"].as_str().unwrap()))
            .bearer_auth(first["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(leave.status(), 204);
        let (status, _, body) = join(&server, &client, "held-9", None).await;
        assert_eq!(status, 201, "a place was freed: {body}");
    }
}

store_tests! {
    /// A peer that times out frees its place too: once a witness in its room hears its `leave`,
    /// its address joins again.
    async fn a_timed_out_peer_frees_its_place() {
        let server = Server::with(json!({"max_peers_per_client": 1, "peer_timeout_secs": 0.3})).await;
        let witness_client = client_from("127.0.0.5");
        let (_, _, joined) = join(&server, &witness_client, "brief", None).await;
        let witness = common::Peer {
            id: joined["peer_id"].as_str().unwrap().to_owned(),
            token: joined["token"].as_str().unwrap().to_owned(),
            room: "brief".into(),
            base: server.base.clone(),
            client: witness_client,
            joined,
        };
        let mut events = witness.events(None).await;
        let client = client_from("127.0.0.1");
        let (status, _, silent) = join(&server, &client, "brief", None).await;
        assert_eq!(status, 201);
        assert_eq!(join(&server, &client, "brief-2", None).await.0, 429);
        assert_eq!(events.next_message().await["type"], "join");
        let leave = events.next_message().await;
        assert_eq!(leave["type"], "leave");
        assert_eq!(leave["data"]["peer_id"], silent["peer_id"]);
        assert_eq!(leave["data"]["reason"], "timeout");
        assert_eq!(join(&server, &client, "brief-2", None).await.0, 201);
    }
}

store_tests! {
    /// Behind a trusted proxy, the limit is charged per forwarded address: the proxy's other
    /// clients still join, and a forged leftmost entry does not change whose limit is charged.
    async fn behind_a_trusted_proxy_the_forwarded_address_is_charged() {
        let server = Server::with(json!({
            "trusted_proxies": ["127.0.0.1/32"],
            "join_burst": 3,
            "join_rate_per_sec": 0.01,
        }))
        .await;
        let proxy = client_from("127.0.0.1");
        for n in 0..3 {
            let forged = format!("10.9.9.{n}, 198.51.100.7");
            let (status, _, _) = join(&server, &proxy, &format!("p-{n}"), Some(&forged)).await;
            assert_eq!(status, 201);
        }
        let (status, _, body) = join(&server, &proxy, "p-x", Some("10.9.9.99, 198.51.100.7")).await;
        assert_eq!(status, 429, "the same client, whatever it forged: {body}");
        let (status, _, _) = join(&server, &proxy, "p-y", Some("198.51.100.8")).await;
        assert_eq!(status, 201, "another client of the proxy");
        // The proxy's own address has its own budget: requests without the header.
        assert_eq!(join(&server, &proxy, "p-z", None).await.0, 201);
        // An address that is not a trusted proxy cannot claim to be forwarding for someone else.
        let direct = client_from("127.0.0.4");
        for n in 0..3 {
            let forged = format!("203.0.113.{n}");
            assert_eq!(join(&server, &direct, "d", Some(&forged)).await.0, 201);
        }
        assert_eq!(
            join(&server, &direct, "d", Some("203.0.113.50")).await.0,
            429
        );
    }
}

store_tests! {
    /// Without trusted proxies `X-Forwarded-For` is ignored: varying it does not buy a new budget.
    async fn without_trusted_proxies_x_forwarded_for_changes_nothing() {
        let server = Server::with(json!({"join_burst": 3, "join_rate_per_sec": 0.01})).await;
        let client = client_from("127.0.0.1");
        for n in 0..3 {
            let forwarded = format!("198.51.100.{n}");
            assert_eq!(join(&server, &client, "x", Some(&forwarded)).await.0, 201);
        }
        let (status, _, body) = join(&server, &client, "x", Some("198.51.100.200")).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"], "too_many_joins");
    }
}
