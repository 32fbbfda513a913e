//! `docs/openapi.yaml` describes the server as it is: every route the server mounts (Rocket's
//! and the front's relay routes) is in the document and nothing else is, the server serves the
//! document itself, and it names the same error codes as docs/API.md.
//!
//! Whether the document is valid OpenAPI and whether the server's answers match its schemas is
//! schemathesis's job in CI (`.ci/run`); this file keeps the cheap, structural promises in
//! `cargo test`.

mod common;

use std::collections::BTreeSet;

use common::Server;
use serde_json::json;

const DOCUMENT: &str = include_str!("../docs/openapi.yaml");
const PROSE: &str = include_str!("../docs/API.md");

/// The `(METHOD, path)` pairs under the document's `paths:`. The document is written with
/// two-space indentation, paths at depth 1 and methods at depth 2; that layout is all this reads.
fn documented_operations() -> BTreeSet<(String, String)> {
    let methods = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in DOCUMENT.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(name) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = Some(format!("/{name}"));
        } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if methods.contains(&method) {
                let path = path.clone().expect("a method under a path");
                operations.insert((method.to_uppercase(), path));
            }
        }
    }
    operations
}

/// Every route the server mounts is an operation of the document, and every operation of the
/// document is a route the server mounts: a route added without documenting it, or documented
/// without existing, fails here.
#[tokio::test]
async fn the_document_lists_exactly_the_mounted_routes() {
    let server = signpost::Server::bind(common::test_figment(json!({})))
        .await
        .unwrap();
    let mounted: BTreeSet<(String, String)> = server
        .endpoints()
        .iter()
        .map(|endpoint| (endpoint.method.clone(), endpoint.path.clone()))
        .collect();
    // The relay routes are the front's, not Rocket's: they must be listed too.
    for relay in [
        ("POST", "/api/rooms/{room}/messages"),
        ("GET", "/api/rooms/{room}/peers/{peer}/events"),
        ("GET", "/api/rooms/{room}/peers/{peer}/messages"),
    ] {
        assert!(
            mounted.contains(&(relay.0.to_owned(), relay.1.to_owned())),
            "{relay:?} in {mounted:?}"
        );
    }
    let documented = documented_operations();
    let undocumented: Vec<_> = mounted.difference(&documented).collect();
    let unmounted: Vec<_> = documented.difference(&mounted).collect();
    assert!(
        undocumented.is_empty(),
        "mounted, not in docs/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unmounted.is_empty(),
        "in docs/openapi.yaml, not mounted: {unmounted:?}"
    );
}

/// `GET /api/openapi.yaml` answers the repository's document, byte for byte, as YAML.
#[tokio::test]
async fn the_server_serves_the_document() {
    let server = Server::start().await;
    let response = server
        .client
        .get(server.url("/api/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    assert_eq!(response.text().await.unwrap(), DOCUMENT);
}

/// The snake_case codes in backquotes on `lines`.
fn codes<'a>(lines: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in lines {
        for (index, piece) in line.split('`').enumerate() {
            let is_code = !piece.is_empty()
                && piece.contains('_')
                && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if index % 2 == 1 && is_code {
                found.insert(piece.to_owned());
            }
        }
    }
    found
}

/// The error codes of docs/API.md's error table are the codes the document's error responses
/// enumerate, and the other way round, so that a client generated from the document knows
/// every code the prose promises.
#[test]
fn the_document_and_the_prose_name_the_same_error_codes() {
    let prose_table = PROSE
        .lines()
        .skip_while(|line| !line.starts_with("| status | `error` |"))
        .take_while(|line| line.starts_with('|'));
    let prose = codes(prose_table);
    assert!(prose.contains("room_full") && prose.contains("method_not_allowed"));
    let mut document = BTreeSet::new();
    for line in DOCUMENT.lines() {
        let line = line.trim();
        if let Some(list) = line
            .strip_prefix("enum: [")
            .and_then(|l| l.strip_suffix(']'))
        {
            document.extend(list.split(", ").map(str::to_owned));
        } else if let Some(code) = line.strip_prefix("const: ") {
            document.insert(code.to_owned());
        }
    }
    // Codes only Rocket's own failures carry, which the table names in the paragraph below it.
    document.remove("bad_request");
    // What the table's prose mentions besides codes (settings, fields) is not a code.
    let prose: BTreeSet<String> = prose
        .into_iter()
        .filter(|code| !code.starts_with("max_") && !code.starts_with("cors_allowed"))
        .filter(|code| !["last_event_id", "retry_after"].contains(&code.as_str()))
        .collect();
    // The answers to what no operation is: a path the document does not have (`not_found`), a
    // method it does not list for a path (`method_not_allowed`), a CORS preflight
    // (`cors_refused`, on OPTIONS, which OpenAPI leaves to the server).
    let outside_operations = ["not_found", "method_not_allowed", "cors_refused"];
    let missing: Vec<_> = prose
        .iter()
        .filter(|code| !outside_operations.contains(&code.as_str()))
        .filter(|code| !document.contains(*code))
        .collect();
    assert!(
        missing.is_empty(),
        "in API.md, not in openapi.yaml: {missing:?}"
    );
    let error_codes: Vec<_> = document
        .iter()
        .filter(|code| code.contains('_') && !prose.contains(*code))
        .collect();
    assert!(
        error_codes.is_empty(),
        "in openapi.yaml, not in API.md's table: {error_codes:?}"
    );
}
