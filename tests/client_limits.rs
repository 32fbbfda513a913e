//! Limits one client address cannot get past: its join rate, the live peers it holds and the
//! rooms it holds them in, so that no single client can lock others out of an open server; and whose address a request is,
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
    join_with(server, client, room, forwarded_for, json!({})).await
}

/// [`join`] with `body`.
async fn join_with(
    server: &Server,
    client: &reqwest::Client,
    room: &str,
    forwarded_for: Option<&str>,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let mut request = client
        .post(server.url(&format!("/api/rooms/{room}/peers")))
        .json(&body);
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
    /// The flood from the issue, on the default join rate: one address joining fresh rooms as
    /// fast as it can (16 requests in flight) is held to its burst and then refused with 429
    /// `too_many_joins` and `Retry-After`; the room table is far from full, and another address
    /// still joins. (`max_rooms_per_client` is raised so that only the rate refuses.)
    async fn a_flood_from_one_address_is_limited_and_others_still_join() {
        let server = Server::with(json!({"max_rooms_per_client": 10_000})).await;
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
        // On Redis the address's place is given back by the round trip after the sweep that
        // told the room (docs/API.md, "Several instances"), in the script that also counts the
        // deployment's peers: the peers gauge falling to the witness alone says it has run.
        common::eventually::eventually("the silent peer's place is given back", || async {
            server.metric("signpost_peers").await == 1.0
        })
        .await;
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

/// Leaves as the peer of a join response `joined`, through `client`.
async fn leave(server: &Server, client: &reqwest::Client, joined: &Value) {
    let response = client
        .delete(server.url(joined["leave_url"].as_str().unwrap()))
        .bearer_auth(joined["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

store_tests! {
    /// `max_rooms_per_client`: an address with peers in its limit of rooms is refused a new room
    /// with 429 `too_many_rooms_for_client` and `Retry-After`, but still joins the rooms it is in;
    /// its last peer leaving a room frees that room's place; other addresses are not affected.
    async fn rooms_per_address_are_limited() {
        let server = Server::with(json!({"max_rooms_per_client": 2})).await;
        let client = client_from("127.0.0.1");
        let (_, _, first) = join(&server, &client, "one", None).await;
        let (status, _, body) = join(&server, &client, "two", None).await;
        assert_eq!(status, 201, "{body}");
        let (status, retry_after, body) = join(&server, &client, "three", None).await;
        assert_eq!((status, body["error"].as_str()), (429, Some("too_many_rooms_for_client")), "{body}");
        assert_eq!(retry_after, Some(30), "Retry-After: the peer timeout");
        assert_eq!(body["retry_after"], json!(30));
        assert_eq!(server.get_json("/api/rooms/three").await.0, 404, "nothing was created");
        let (status, _, second) = join(&server, &client, "one", None).await;
        assert_eq!(status, 201, "a room it is in: {second}");
        let (status, _, _) = join(&server, &client_from("127.0.0.3"), "three", None).await;
        assert_eq!(status, 201, "another address joins");

        leave(&server, &client, &first).await;
        assert_eq!(join(&server, &client, "three", None).await.0, 429, "a peer is left in one");
        leave(&server, &client, &second).await;
        let (status, _, body) = join(&server, &client, "three", None).await;
        assert_eq!(status, 201, "its last peer in one left: {body}");
    }
}

store_tests! {
    /// A join refused for its address holds no room slot: with `max_rooms` = 2, an address at its
    /// peer limit tries a new room and is refused, and another address still creates the second
    /// room (on Redis the refused join used to keep its room reserved for the presence timeout).
    async fn a_refused_join_holds_no_room_slot() {
        let server = Server::with(json!({
            "max_rooms": 2,
            "max_peers_per_client": 1,
            "max_rooms_per_client": 1,
        }))
        .await;
        let client = client_from("127.0.0.1");
        assert_eq!(join(&server, &client, "held", None).await.0, 201);
        for room in ["refused-1", "refused-2"] {
            let (status, _, body) = join(&server, &client, room, None).await;
            assert_eq!((status, body["error"].as_str()), (429, Some("too_many_peers_for_client")));
        }
        let (status, _, body) = join(&server, &client_from("127.0.0.2"), "second", None).await;
        assert_eq!(status, 201, "the refused joins hold no room: {body}");
        let (status, _, body) = join(&server, &client_from("127.0.0.3"), "third", None).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("too_many_rooms")));
    }
}

store_tests! {
    /// Which error wins when several apply (docs/API.md) is the same on both stores: the room's
    /// own state (`peer_present`, `room_full`), then the server's (`too_many_rooms`), then the
    /// address's peers, then its rooms. Here one address at every limit of its own asks.
    async fn the_admission_order_is_the_same_on_both_stores() {
        let server = Server::with(json!({
            "resume_secret": "a-resume-secret-of-at-least-32-bytes",
            "max_rooms": 2,
            "max_peers_per_room": 1,
            "max_peers_per_client": 1,
            "max_rooms_per_client": 1,
        }))
        .await;
        let client = client_from("127.0.0.1");
        let (status, _, alice) = join(&server, &client, "here", None).await;
        assert_eq!(status, 201, "{alice}");
        let error = |answer: (u16, Option<u64>, Value)| {
            (answer.0, answer.2["error"].as_str().unwrap_or_default().to_owned())
        };
        let resumed = json!({"resume": alice["resume"]});
        assert_eq!(
            error(join_with(&server, &client, "here", None, resumed).await),
            (409, "peer_present".to_owned()),
            "a resumed join of a present peer, from an address at its limits"
        );
        assert_eq!(
            error(join(&server, &client, "here", None).await),
            (409, "room_full".to_owned()),
            "a full room, from an address at its limits"
        );
        assert_eq!(
            error(join(&server, &client, "new", None).await),
            (429, "too_many_peers_for_client".to_owned()),
            "the peers before the rooms"
        );
        assert_eq!(join(&server, &client_from("127.0.0.2"), "other", None).await.0, 201);
        assert_eq!(
            error(join(&server, &client, "new", None).await),
            (409, "too_many_rooms".to_owned()),
            "a full server before the address's limits"
        );
    }
}

store_tests! {
    /// `client_ipv6_prefix`: IPv6 clients are counted by their /64 by default, and by the
    /// configured prefix when set (here a /48: every address of 2001:db8:1::/48 is one client).
    async fn ipv6_clients_are_counted_by_the_configured_prefix() {
        let proxy = client_from("127.0.0.1");
        let settings = |prefix: Option<u8>| {
            let mut settings = json!({"trusted_proxies": ["127.0.0.1/32"], "max_peers_per_client": 1});
            if let Some(prefix) = prefix {
                settings["client_ipv6_prefix"] = json!(prefix);
            }
            settings
        };
        let by_64 = Server::with(settings(None)).await;
        assert_eq!(join(&by_64, &proxy, "a", Some("2001:db8:1:1::1")).await.0, 201);
        assert_eq!(join(&by_64, &proxy, "a", Some("2001:db8:1:2::1")).await.0, 201, "another /64");
        assert_eq!(join(&by_64, &proxy, "a", Some("2001:db8:1:1::2")).await.0, 429, "the same /64");

        let by_48 = Server::with(settings(Some(48))).await;
        assert_eq!(join(&by_48, &proxy, "a", Some("2001:db8:1:1::1")).await.0, 201);
        let (status, _, body) = join(&by_48, &proxy, "a", Some("2001:db8:1:2::1")).await;
        assert_eq!((status, body["error"].as_str()), (429, Some("too_many_peers_for_client")), "the same /48");
        assert_eq!(join(&by_48, &proxy, "a", Some("2001:db8:2::1")).await.0, 201, "another /48");
    }
}

store_tests! {
    /// Every join is charged to the rate, whatever its fate, and the rate's refusal wins over
    /// any other: joins refused for their body count, and once the burst is spent a join with a
    /// bad body is told `too_many_joins`, as a good one is.
    async fn every_join_is_charged_and_the_rate_wins() {
        let server = Server::with(json!({"join_burst": 3, "join_rate_per_sec": 0.01})).await;
        let client = client_from("127.0.0.1");
        let too_long = json!({"name": "x".repeat(65)});
        assert_eq!(join(&server, &client, "charged", None).await.0, 201);
        for _ in 0..2 {
            let (status, _, body) = join_with(&server, &client, "charged", None, too_long.clone()).await;
            assert_eq!((status, body["error"].as_str()), (422, Some("invalid_name")));
        }
        let (status, _, body) = join_with(&server, &client, "charged", None, too_long).await;
        assert_eq!((status, body["error"].as_str()), (429, Some("too_many_joins")), "a bad body");
        let (status, _, body) = join(&server, &client, "charged", None).await;
        assert_eq!((status, body["error"].as_str()), (429, Some("too_many_joins")), "a good one");
    }
}
