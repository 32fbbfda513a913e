//! Running signpost for real: health, Prometheus metrics, CORS, and a clean shutdown with
//! streams and polls open.

#[macro_use]
mod common;

use common::external;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::eventually::poll_until;
use common::{test_figment, Peer, Server};
use serde_json::{json, Value};

/// `/healthz` (liveness) and `/readyz` (readiness) answer 200 with a JSON body and no token,
/// naming the store they use.
#[tokio::test]
async fn healthz_and_readyz_say_ok() {
    let server = Server::start().await;
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    assert_eq!(body["store_status"], "ok");
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    assert_eq!(ready["store"], body["store"]);
    server.stop().await;
}

/// Parses an exposition with the OpenMetrics parser of Prometheus's own Python client (Debian's
/// `python3-prometheus-client`), which refuses anything malformed, into `name{k="v",…}` → value.
fn parse_with_prometheus_client(exposition: &str) -> HashMap<String, f64> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(json.dumps([f"{sample.name}{{{labels}}}" if labels else sample.name, sample.value]))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (apt-get install python3-prometheus-client; .ci/run does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the exposition parses: {}\n{exposition}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<(String, f64)>(line).unwrap())
        .collect()
}

#[derive(Debug)]
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn from(server: &Server) -> Scrape {
        let response = server
            .client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        Scrape(parse_with_prometheus_client(&text))
    }

    fn get(&self, sample: &str) -> f64 {
        *self
            .0
            .get(sample)
            .unwrap_or_else(|| panic!("{sample} in {:?}", self.0.keys()))
    }
}

/// Scrapes until `sample` reads `value`: for gauges that follow a request the test cannot
/// observe finishing (a poll starting to wait). Each round is a real scrape, not a sleep.
async fn scrape_until(server: &Server, sample: &str, value: f64) -> Scrape {
    poll_until(
        &format!("{sample} reaches {value}"),
        common::EVENT_DEADLINE,
        || Scrape::from(server),
        |scrape| scrape.get(sample) == value,
    )
    .await
}

async fn send_without_token(server: &Server, room: &str) -> u16 {
    let response = server
        .client
        .post(server.url(&format!("/api/rooms/{room}/messages")))
        .json(&json!({"type": "chat"}))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// Every series is there from the start, and each moves with the traffic that should move it:
/// rooms, peers, open streams, waiting polls, accepted and delivered messages, rejections by
/// code, departures by reason (evictions included) and mailbox resets.
#[cfg_attr(
    signpost_missing = "python3-prometheus-client",
    ignore = "needs Prometheus's parser: apt-get install python3-prometheus-client (README.md, Prerequisites)"
)]
#[tokio::test]
async fn metrics_follow_the_traffic() {
    if !external::can_run(
        "metrics_follow_the_traffic",
        external::python_module("prometheus_client", "python3-prometheus-client"),
    ) {
        return;
    }
    let server = Server::with(json!({"mailbox_capacity": 4})).await;
    let start = Scrape::from(&server).await;
    for sample in [
        "signpost_rooms",
        "signpost_peers",
        "signpost_sse_streams",
        "signpost_polls_in_flight",
        "signpost_messages_accepted_total",
        "signpost_peers_joined_total",
        r#"signpost_messages_delivered_total{transport="sse"}"#,
        r#"signpost_peers_left_total{reason="evicted"}"#,
        r#"signpost_mailbox_resets_total{reason="ahead"}"#,
        r#"signpost_stun_requests_total{outcome="answered"}"#,
    ] {
        assert_eq!(start.get(sample), 0.0, "{sample} starts at 0");
    }

    let alice = server.join("metrics", "alice").await;
    let bob = server.join("metrics", "bob").await;
    let mut bob_events = bob.events(None).await;
    for n in 0..2 {
        alice
            .send_ok(json!({"type": "chat", "to": bob.id, "data": n}))
            .await;
        bob_events.next_message().await;
    }
    // Alice had bob's join waiting, so her poll returns at once with it.
    let (_, polled) = alice.poll(0, 10.0).await;
    assert_eq!(polled["messages"].as_array().unwrap().len(), 1);
    let scrape = Scrape::from(&server).await;
    assert_eq!(scrape.get("signpost_rooms"), 1.0);
    assert_eq!(scrape.get("signpost_peers"), 2.0);
    assert_eq!(scrape.get("signpost_peers_joined_total"), 2.0);
    assert_eq!(scrape.get("signpost_sse_streams"), 1.0);
    assert_eq!(scrape.get("signpost_messages_accepted_total"), 2.0);
    assert_eq!(
        scrape.get(r#"signpost_messages_delivered_total{transport="sse"}"#),
        2.0
    );
    assert_eq!(
        scrape.get(r#"signpost_messages_delivered_total{transport="poll"}"#),
        1.0
    );

    // A poll with nothing to return waits, and is counted while it does.
    let waiting = tokio::spawn({
        let alice = alice.clone();
        async move { alice.poll(1, 10.0).await }
    });
    scrape_until(&server, "signpost_polls_in_flight", 1.0).await;
    bob.send_ok(json!({"type": "chat", "to": alice.id})).await;
    assert_eq!(waiting.await.unwrap().0, 200);

    // Rejections, by code.
    assert_eq!(send_without_token(&server, "metrics").await, 401);
    assert_eq!(send_without_token(&server, "metrics").await, 401);
    assert_eq!(server.get_json("/api/nowhere").await.0, 404);
    // A resume from beyond the newest id is told to reset.
    drop(bob_events);
    let mut resumed = bob.events(Some(99)).await;
    assert_eq!(resumed.next().await.event, "reset");
    // Carol never reads: four messages fill her mailbox, the fifth evicts her.
    let carol = server.join("metrics", "carol").await;
    let to_carol = json!({"type": "chat", "to": carol.id});
    alice
        .send_ok(json!([to_carol, to_carol, to_carol, to_carol]))
        .await;
    alice.send_ok(json!({"type": "chat", "to": carol.id})).await;
    assert_eq!(bob.leave().await, 204);

    let end = Scrape::from(&server).await;
    assert_eq!(
        end.get(r#"signpost_rejections_total{code="missing_token"}"#),
        2.0
    );
    assert_eq!(
        end.get(r#"signpost_rejections_total{code="not_found"}"#),
        1.0
    );
    assert_eq!(
        end.get(r#"signpost_mailbox_resets_total{reason="ahead"}"#),
        1.0
    );
    assert_eq!(
        end.get(r#"signpost_peers_left_total{reason="evicted"}"#),
        1.0
    );
    assert_eq!(end.get(r#"signpost_peers_left_total{reason="left"}"#), 1.0);
    assert_eq!(end.get("signpost_peers"), 1.0, "only alice is left");
    assert_eq!(end.get("signpost_messages_accepted_total"), 8.0);
    server.stop().await;
}

/// The `signpost_rooms` and `signpost_peers` gauges, read from the exposition's text.
async fn gauges(server: &Server) -> (f64, f64) {
    let text = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|value| value.trim().parse().expect("a sample value"))
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    (sample("signpost_rooms"), sample("signpost_peers"))
}

store_tests! {
    /// The rooms and peers gauges stay equal to what the rooms hold through joins, refused
    /// joins, an eviction, a leave that empties a room and a timeout (on Redis they are counts the
    /// scripts keep, read in O(1), not a look at every room).
    async fn the_room_and_peer_gauges_stay_right() {
        let server = Server::with(json!({
            "mailbox_capacity": 2, "peer_timeout_secs": 3.0, "max_rooms": 2,
            "max_peers_per_room": 3, "send_rate_per_sec": 1e6, "send_burst": 1e6,
        }))
        .await;
        assert_eq!(gauges(&server).await, (0.0, 0.0));
        let alice = server.join("gauged", "alice").await;
        let mut alice_events = alice.events(None).await;
        let bob = server.join("gauged", "bob").await;
        let carol = server.join("other", "carol").await;
        let dave = server.join("gauged", "dave").await;
        assert_eq!(gauges(&server).await, (2.0, 4.0), "four joins in two rooms");
        let refused = server.client.post(server.url("/api/rooms/gauged/peers")).send().await.unwrap();
        assert_eq!(refused.status(), 409, "room_full");
        let refused = server.client.post(server.url("/api/rooms/third/peers")).send().await.unwrap();
        assert_eq!(refused.status(), 409, "too_many_rooms");
        assert_eq!(gauges(&server).await, (2.0, 4.0), "refused joins count nothing");

        // Bob never reads: two messages fill his mailbox, the third evicts him.
        let to_bob = json!({"type": "chat", "to": bob.id});
        alice.send_ok(json!([to_bob, to_bob, to_bob])).await;
        assert_eq!(alice_events.next_message().await["data"]["peer_id"], bob.id.as_str());
        assert_eq!(alice_events.next_message().await["data"]["peer_id"], dave.id.as_str());
        let evicted = alice_events.next_message().await;
        assert_eq!(evicted["data"], json!({"peer_id": bob.id, "reason": "evicted"}));
        assert_eq!(gauges(&server).await, (2.0, 3.0), "an eviction");

        assert_eq!(carol.leave().await, 204);
        assert_eq!(gauges(&server).await, (1.0, 2.0), "a leave that empties its room");

        // Dave never listens: he times out, while Alice's stream keeps her present.
        let timed_out = alice_events.next_message().await;
        assert_eq!(timed_out["data"], json!({"peer_id": dave.id, "reason": "timeout"}));
        // The room hears the leave before the sweep's own request has finished counting it.
        poll_until("the timeout is counted", common::EVENT_DEADLINE, || gauges(&server), |counted| *counted == (1.0, 1.0)).await;
        drop(alice_events);
        assert_eq!(alice.leave().await, 204);
        assert_eq!(gauges(&server).await, (0.0, 0.0), "the last peer left");
    }
}

const APP: &str = "https://app.example.org";

async fn preflight(server: &Server, origin: &str, method: &str) -> reqwest::Response {
    server
        .client
        .request(
            reqwest::Method::OPTIONS,
            server.url("/api/rooms/cors/peers"),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

/// A preflight from a listed origin is allowed with the methods and headers the API uses; one
/// from another origin, or for a method the API does not use, is refused with a JSON 403 and no
/// `Access-Control-Allow-Origin`.
#[tokio::test]
async fn cors_preflight_is_allowed_and_refused_per_config() {
    let server = Server::with(json!({"cors_allowed_origins": [APP]})).await;

    let allowed = preflight(&server, APP, "POST").await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some(APP));
    let methods = header(&allowed, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = header(&allowed, "access-control-allow-headers").unwrap();
    assert!(
        headers.contains("Authorization") && headers.contains("Content-Type"),
        "{headers}"
    );
    assert_eq!(header(&allowed, "vary"), Some("Origin"));

    for (origin, method) in [("https://evil.example.org", "POST"), (APP, "PUT")] {
        let refused = preflight(&server, origin, method).await;
        assert_eq!(refused.status(), 403, "{origin} {method}");
        assert_eq!(header(&refused, "access-control-allow-origin"), None);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "cors_refused", "{origin} {method}");
    }
    server.stop().await;
}

/// Actual requests (successes and errors alike) carry `Access-Control-Allow-Origin` for a listed
/// origin only, and expose the headers a page needs (`Location`, `Retry-After`).
#[tokio::test]
async fn cors_headers_on_responses_follow_the_origin() {
    let server = Server::with(json!({"cors_allowed_origins": [APP]})).await;
    let join = |origin: &'static str| {
        server
            .client
            .post(server.url("/api/rooms/cors/peers"))
            .header("Origin", origin)
            .json(&json!({}))
            .send()
    };
    let ok = join(APP).await.unwrap();
    assert_eq!(ok.status(), 201);
    assert_eq!(header(&ok, "access-control-allow-origin"), Some(APP));
    assert!(header(&ok, "access-control-expose-headers")
        .unwrap()
        .contains("Retry-After"));
    let stranger = join("https://evil.example.org").await.unwrap();
    assert_eq!(header(&stranger, "access-control-allow-origin"), None);

    let error = server
        .client
        .post(server.url("/api/rooms/cors/messages"))
        .header("Origin", APP)
        .json(&json!({"type": "chat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error.status(), 401);
    assert_eq!(header(&error, "access-control-allow-origin"), Some(APP));
    server.stop().await;
}

/// By default no other origin is allowed; `["*"]` allows any, answered with `*`.
#[tokio::test]
async fn cors_default_is_same_origin_only_and_star_allows_all() {
    let server = Server::start().await;
    assert_eq!(preflight(&server, APP, "GET").await.status(), 403);
    server.stop().await;

    let server = Server::with(json!({"cors_allowed_origins": ["*"]})).await;
    let allowed = preflight(&server, "https://anyone.example.net", "DELETE").await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some("*"));
    server.stop().await;
}

/// A server whose shutdown grace is `grace` seconds and mercy 1 s.
async fn server_with_grace(grace: u32) -> Server {
    Server::from_figment(test_figment(json!({})).merge(("shutdown.grace", grace))).await
}

/// On shutdown, an open SSE stream ends cleanly (end of stream, not a cut connection) and a poll
/// in flight returns 200 with no messages and where to resume, both before the grace period is
/// over (without the `Shutdown` select they would be cut only after grace and mercy); and the
/// server stops as soon as its connections have closed, not when the grace period runs out.
#[cfg_attr(
    signpost_missing = "python3-prometheus-client",
    ignore = "needs Prometheus's parser: apt-get install python3-prometheus-client (README.md, Prerequisites)"
)]
#[tokio::test]
async fn shutdown_ends_streams_and_polls_within_the_grace_period() {
    if !external::can_run(
        "shutdown_ends_streams_and_polls_within_the_grace_period",
        external::python_module("prometheus_client", "python3-prometheus-client"),
    ) {
        return;
    }
    const GRACE_SECS: u32 = 3;
    let grace = Duration::from_secs(GRACE_SECS.into());
    let server = server_with_grace(GRACE_SECS).await;
    let alice = server.join("bye", "alice").await;
    let bob = server.join("bye", "bob").await;
    let mut alice_events = alice.events(None).await;
    assert_eq!(alice_events.next_message().await["type"], "join");
    let poll = tokio::spawn({
        let bob: Peer = bob.clone();
        async move { bob.poll(0, 25.0).await }
    });
    scrape_until(&server, "signpost_polls_in_flight", 1.0).await;

    let started = Instant::now();
    server.begin_shutdown();
    let stream_end = async {
        let ended = alice_events.ends().await;
        (ended, started.elapsed())
    };
    let poll_return = async {
        let result = poll.await.unwrap();
        (result, started.elapsed())
    };
    let stop = async {
        server.stop().await;
        started.elapsed()
    };
    let ((stream_ended, stream_took), ((status, body), poll_took), stop_took) =
        tokio::join!(stream_end, poll_return, stop);

    assert!(stream_ended, "the SSE stream ended cleanly");
    assert!(
        stream_took < grace,
        "the stream ended after {stream_took:?}"
    );
    assert_eq!(status, 200);
    assert_eq!(body, json!({"messages": [], "last_id": 0, "reset": false}));
    assert!(poll_took < grace, "the poll returned after {poll_took:?}");
    assert!(stop_took < grace, "the server stopped after {stop_took:?}");
}

/// With `metrics_token` set, `GET /metrics` answers only a scrape that presents it as
/// `Authorization: Bearer`: without it or with another token, a 401 JSON error that says which
/// credential is missing; with it, the exposition.
#[tokio::test]
async fn metrics_token_guards_the_metrics() {
    const TOKEN: &str = "a-scraper-token-of-32-characters";
    let server = Server::with(json!({ "metrics_token": TOKEN })).await;
    let scrape = |authorization: Option<&str>| {
        let mut request = server.client.get(server.url("/metrics"));
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        request.send()
    };
    for authorization in [
        None,
        Some("Bearer a-scraper-token-of-32-characterz".to_owned()),
        Some(format!("Bearer {}", &TOKEN[..31])),
        Some(format!("Basic {TOKEN}")),
    ] {
        let response = scrape(authorization.as_deref()).await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "metrics_token_required", "{authorization:?}");
    }
    let response = scrape(Some(&format!("Bearer {TOKEN}"))).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("signpost_rooms"), "{text}");
    server.stop().await;
}

/// A `metrics_token` shorter than 16 bytes stops the server at start: a short one can be
/// guessed.
#[tokio::test]
async fn a_short_metrics_token_is_refused_at_start() {
    let figment = test_figment(json!({ "metrics_token": "short" }));
    match signpost::build(figment).ignite().await {
        Ok(_) => panic!("a 5-byte metrics_token should be refused"),
        Err(error) => assert!(
            matches!(error.kind(), rocket::error::ErrorKind::FailedFairings(_)),
            "refused by signpost's config fairing, not {error}"
        ),
    }
}

/// Every answer carries `Vary: Origin`, once, with or without an `Origin` in the request, from
/// both layers: the relay routes (an answer, an error, a 405 the front gives itself) and Rocket
/// (an API route, an ops route, a static file, a 404 on and off `/api`). A shared cache then
/// never hands one origin's answer to another.
#[tokio::test]
async fn every_answer_varies_on_origin() {
    let server = Server::start().await;
    let alice = server.join("vary", "alice").await;
    let poll = format!("{}/messages?after=0&wait=0", alice.peer_path());
    let requests = [
        ("GET", poll.as_str(), true, 200),
        ("POST", "/api/rooms/vary/messages", false, 401),
        ("PUT", "/api/rooms/vary/messages", false, 405),
        ("GET", "/api/rooms/vary", false, 200),
        ("GET", "/healthz", false, 200),
        ("GET", "/", false, 200),
        ("GET", "/no-such-file", false, 404),
        ("GET", "/api/no-such-route", false, 404),
    ];
    for origin in [None, Some(APP)] {
        for (method, path, with_token, status) in requests {
            let mut request = server
                .client
                .request(method.parse().unwrap(), server.url(path));
            if with_token {
                request = request.bearer_auth(&alice.token);
            }
            if let Some(origin) = origin {
                request = request.header("Origin", origin);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status, "{method} {path} from {origin:?}");
            let vary: Vec<&str> = response
                .headers()
                .get_all("vary")
                .iter()
                .flat_map(|value| value.to_str().unwrap().split(','))
                .map(str::trim)
                .filter(|name| name.eq_ignore_ascii_case("origin"))
                .collect();
            assert_eq!(vary, ["Origin"], "{method} {path} from {origin:?}");
        }
    }
    server.stop().await;
}

/// Every answer carries the same browser protections whichever layer answered it: `nosniff` on
/// every answer, once; `X-Frame-Options: SAMEORIGIN` and the `Permissions-Policy` opt-out on the
/// documents outside `/api/` (the page, its files, the front's refusals there), and on no `/api/`
/// answer, JSON or stream, of either layer. Rocket's `/api/` answers had them (its `Shield`)
/// where the relay routes' did not, and the front's refusals had only `nosniff`, only under
/// `/api/`.
#[tokio::test]
async fn both_layers_answer_with_the_same_browser_protections() {
    let server = Server::start().await;
    let alice = server.join("shield", "alice").await;
    let poll = format!("{}/messages?after=0&wait=0", alice.peer_path());
    let events = format!("{}/events", alice.peer_path());
    let requests = [
        ("GET", poll.as_str(), true, 200),
        ("GET", events.as_str(), true, 200),
        ("POST", "/api/rooms/shield/messages", false, 401),
        ("PUT", "/api/rooms/shield/messages", false, 405),
        ("POST", "/healthz", false, 405),
        ("GET", "/api/rooms/shield", false, 200),
        ("GET", "/healthz", false, 200),
        ("GET", "/", false, 200),
        ("GET", "/no-such-file", false, 404),
    ];
    for (method, path, with_token, status) in requests {
        let mut request = server
            .client
            .request(method.parse().unwrap(), server.url(path));
        if with_token {
            request = request.bearer_auth(&alice.token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let document = !path.starts_with("/api/");
        for (name, value, expected) in [
            ("x-content-type-options", "nosniff", true),
            ("x-frame-options", "SAMEORIGIN", document),
            ("permissions-policy", "interest-cohort=()", document),
        ] {
            let values: Vec<_> = response.headers().get_all(name).iter().collect();
            let wanted: &[&str] = if expected { &[value] } else { &[] };
            assert_eq!(values, wanted, "{name} on {method} {path}");
        }
    }
    server.stop().await;
}
