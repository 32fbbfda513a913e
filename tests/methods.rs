//! A known path asked with a method it does not answer is `405 Method Not Allowed` with `Allow`
//! and the API's JSON error, whichever layer serves the path (Rocket's routes, the front's
//! relay routes); an unknown path is still a `404`.

mod common;

use common::Server;
use reqwest::Method;
use serde_json::{json, Value};

/// The status, the `Allow` header and the `error` code of the answer to `method` on `path`.
async fn answer(server: &Server, method: &str, path: &str) -> (u16, Option<String>, String) {
    let method = Method::from_bytes(method.as_bytes()).expect("a method token");
    let response = server
        .client
        .request(method.clone(), server.url(path))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .map(|allow| allow.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let code = if method == Method::HEAD || text.is_empty() {
        String::new()
    } else {
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"));
        body["error"].as_str().unwrap_or_default().to_owned()
    };
    (status, allow, code)
}

/// A concrete path for a route template, with a valid room name and peer id.
fn concrete(template: &str) -> String {
    template
        .replace("{room}", "methods")
        .replace("{peer}", &uuid::Uuid::new_v4().to_string())
}

/// The new user's first try from the issue: `PUT /api/rooms/demo` is a 405 naming what the path
/// answers, with the usual JSON error, and it creates nothing.
#[tokio::test]
async fn put_on_a_room_is_405_with_allow() {
    let server = Server::start().await;
    let (status, allow, code) = answer(&server, "PUT", "/api/rooms/demo").await;
    assert_eq!(status, 405);
    assert_eq!(allow.as_deref(), Some("GET, HEAD, OPTIONS"));
    assert_eq!(code, "method_not_allowed");
    assert_eq!(server.get_json("/api/rooms/demo").await.0, 404);
}

/// The relay paths, which the front serves without Rocket, refuse other methods the same way;
/// `HEAD` on the stream and the poll is refused (it would open a stream or acknowledge messages
/// nobody reads), and refusing it leaves the peer's live stream alone.
#[tokio::test]
async fn relay_paths_refuse_other_methods() {
    let server = Server::start().await;
    let alice = server.join("relay", "alice").await;
    let mut alice_events = alice.events(None).await;
    let peer = alice.peer_path();
    let cases = [
        (
            "DELETE",
            "/api/rooms/relay/messages".to_owned(),
            "OPTIONS, POST",
        ),
        (
            "GET",
            "/api/rooms/relay/messages".to_owned(),
            "OPTIONS, POST",
        ),
        ("POST", format!("{peer}/events"), "GET, OPTIONS"),
        ("HEAD", format!("{peer}/events"), "GET, OPTIONS"),
        ("HEAD", format!("{peer}/messages"), "GET, OPTIONS"),
        ("PATCH", format!("{peer}/messages"), "GET, OPTIONS"),
        ("QUERY", format!("{peer}/messages"), "GET, OPTIONS"),
    ];
    for (method, path, expected) in cases {
        let (status, allow, code) = answer(&server, method, &path).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(allow.as_deref(), Some(expected), "{method} {path}");
        if method != "HEAD" {
            assert_eq!(code, "method_not_allowed", "{method} {path}");
        }
    }
    let bob = server.join("relay", "bob").await;
    assert_eq!(alice_events.next_message().await["data"]["peer_id"], bob.id);
}

/// Every route the server mounts refuses every method it does not answer with a 405 whose
/// `Allow` names the route's own method; `OPTIONS` on an `/api` path is the CORS preflight's
/// (204), and `HEAD` is answered wherever Rocket serves a `GET`.
#[tokio::test]
async fn every_route_refuses_every_other_method() {
    let listing = signpost::Server::bind(common::test_figment(json!({})))
        .await
        .unwrap();
    let endpoints = listing.endpoints().to_vec();
    drop(listing);
    assert!(endpoints.len() >= 10, "{endpoints:?}");
    let server = Server::start().await;
    let methods = ["GET", "PUT", "POST", "DELETE", "PATCH", "TRACE", "QUERY"];
    for endpoint in &endpoints {
        let path = concrete(&endpoint.path);
        let answered: Vec<&str> = endpoints
            .iter()
            .filter(|other| other.path == endpoint.path)
            .map(|other| other.method.as_str())
            .collect();
        for method in methods.iter().filter(|method| !answered.contains(method)) {
            let (status, allow, code) = answer(&server, method, &path).await;
            assert_eq!(status, 405, "{method} {path}");
            let allow = allow.unwrap_or_default();
            assert!(
                allow.split(", ").any(|m| m == endpoint.method),
                "{method} {path}: Allow {allow}"
            );
            assert_eq!(code, "method_not_allowed", "{method} {path}");
        }
        if endpoint.path.starts_with("/api/") {
            assert_eq!(answer(&server, "OPTIONS", &path).await.0, 204, "{path}");
        }
    }
}

/// A path no route has is a 404 `not_found` whatever the method: a 405 only says that the path
/// exists.
#[tokio::test]
async fn unknown_paths_stay_404() {
    let server = Server::start().await;
    for (method, path) in [
        ("PUT", "/api/nowhere"),
        ("GET", "/api/rooms/a/b/c"),
        ("POST", "/api/rooms//peers"),
        ("DELETE", "/healthz/extra"),
    ] {
        let (status, allow, code) = answer(&server, method, path).await;
        assert_eq!(
            (status, code.as_str()),
            (404, "not_found"),
            "{method} {path}"
        );
        assert_eq!(allow, None, "{method} {path}");
    }
}
