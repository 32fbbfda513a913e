//! The log of the real binary, as an operator's log collector reads it: every line has a UTC
//! timestamp, a level and the instance's name, as text or as one JSON object per line; and
//! with everything switched on (`RUST_LOG=trace`, Rocket's records included) no token and no
//! query string ever reaches it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use common::process::{ChildProcess, Watch};

const DEADLINE: Duration = Duration::from_secs(10);

/// The binary, started with `settings` as its `signpost` table and `rust_log` as `RUST_LOG`;
/// killed if a test fails before stopping it.
struct Signpost {
    process: ChildProcess,
    base: String,
    client: reqwest::Client,
}

impl Signpost {
    /// Starts the binary and waits for the line that says where it listens.
    fn start(settings: &str, rust_log: Option<&str>) -> Signpost {
        let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("ROCKET_ADDRESS", "127.0.0.1")
            .env("ROCKET_PORT", "0")
            .env("ROCKET_SIGNPOST", settings)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(rust_log) = rust_log {
            command.env("RUST_LOG", rust_log);
        }
        let mut process = ChildProcess::spawn("signpost", command, Watch::Stderr);
        let base = process.read_until("the listening line", DEADLINE, |line| {
            // In JSON the address ends at the closing quote of the message.
            let rest = line.split("listening on ").nth(1)?;
            rest.split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .map(str::to_owned)
        });
        Signpost {
            process,
            base,
            client: reqwest::Client::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Joins `room` as `name`; returns the peer id and its token.
    async fn join(&self, room: &str, name: &str) -> (String, String) {
        let body: Value = self
            .client
            .post(self.url(&format!("/api/rooms/{room}/peers")))
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            body["peer_id"].as_str().unwrap().to_owned(),
            body["token"].as_str().unwrap().to_owned(),
        )
    }

    /// SIGTERM, then every line the process wrote until it exited.
    fn stop(mut self) -> Vec<String> {
        self.process.terminate();
        assert!(self.process.wait().success(), "a clean exit");
        // The output ends with the pipe, so this takes every line the process wrote.
        self.process.whole_output(DEADLINE)
    }
}

/// Whether `text` is a UTC RFC 3339 timestamp as the log writes it: `2025-01-31T23:59:59.123456Z`.
fn is_utc_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    bytes.len() > 20
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && bytes[19] == b'.'
        && digits(20..bytes.len() - 1)
        && text.ends_with('Z')
}

/// By default each line reads `<timestamp> <LEVEL> <instance> <target>: <message and fields>`,
/// and the instance is `<hostname>-<pid>`, which tells apart two instances on one host.
#[tokio::test]
async fn a_text_line_has_a_timestamp_a_level_and_the_instance() {
    let signpost = Signpost::start("{}", None);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let instance = format!("{}-{}", hostname.trim(), signpost.pid());
    let (peer, _) = signpost.join("text", "alice").await;
    let log = signpost.stop();

    let join = format!("join room=text peer={peer} client=127.0.0.1");
    let line = log
        .iter()
        .find(|line| line.ends_with(&join))
        .unwrap_or_else(|| panic!("a join line in:\n{}", log.join("\n")));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(is_utc_timestamp(words[0]), "{line}");
    assert_eq!(words[1..4], ["INFO", &instance, "signpost:"], "{line}");
    for line in &log {
        assert!(line.contains(&format!(" {instance} ")), "{line}");
    }
}

/// With `log_format = "json"` every line, Rocket's bridged records included, is one JSON object
/// with the timestamp, the level, the configured instance, the target and the fields, so a log
/// collector needs no parsing rules; a failed request's details are fields of their own.
#[tokio::test]
async fn with_log_format_json_every_line_is_an_object_with_the_instance() {
    let signpost = Signpost::start(
        r#"{log_format="json",instance="edge-7",log_level="debug"}"#,
        None,
    );
    let (peer, _) = signpost.join("json", "alice").await;
    let (_, other_token) = signpost.join("json", "bob").await;
    let refused = signpost
        .client
        .delete(signpost.url(&format!("/api/rooms/json/peers/{peer}")))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let log = signpost.stop();

    let records: Vec<Value> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    for record in &records {
        assert!(
            record["timestamp"].as_str().is_some_and(is_utc_timestamp),
            "{record}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .contains(&record["level"].as_str().unwrap()),
            "{record}"
        );
        assert_eq!(record["instance"], "edge-7", "{record}");
        assert!(record["target"].is_string(), "{record}");
        assert!(record["fields"]["message"].is_string(), "{record}");
        assert!(
            record["fields"]
                .as_object()
                .unwrap()
                .keys()
                .all(|key| !key.starts_with("log.")),
            "{record}"
        );
    }
    let has = |target: &str, fields: Value| {
        records
            .iter()
            .any(|record| record["target"] == target && record["fields"] == fields)
    };
    assert!(
        has(
            "signpost",
            json!({"message": format!("join room=json peer={peer} client=127.0.0.1")})
        ),
        "{}",
        log.join("\n")
    );
    assert!(
        has(
            "signpost",
            json!({
                "message": "request failed",
                "method": "DELETE",
                "path": format!("/api/rooms/json/peers/{peer}"),
                "status": 403,
                "code": "wrong_peer",
            })
        ),
        "{}",
        log.join("\n")
    );
    // Rocket's records come through the `log` crate, with their own target.
    assert!(
        records
            .iter()
            .any(|record| record["target"] == "rocket::launch"),
        "{}",
        log.join("\n")
    );
}

/// Sends `request` as raw bytes and returns the status line of the answer.
fn raw_request(base: &str, request: &str) -> String {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every `?` in `log` that starts a query with a value (`?name=...`), with what follows it.
fn queries(log: &str) -> Vec<&str> {
    log.match_indices('?')
        .map(|(at, _)| {
            let rest = &log[at..];
            &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())]
        })
        .filter(|query| query.contains('='))
        .collect()
}

/// `RUST_LOG=trace` switches on every record of every crate, Rocket's included, and yet no
/// token, whether in a query (SSE, poll, leave beacon, an unknown route, a malformed request),
/// in an `Authorization` header or in a join answer, and no query string reaches the log.
#[tokio::test]
async fn at_trace_level_no_token_and_no_query_reaches_the_log() {
    let signpost = Signpost::start("{}", Some("trace"));
    let (alice, alice_token) = signpost.join("secret", "alice").await;
    let (bob, bob_token) = signpost.join("secret", "bob").await;
    let get = |path: String| signpost.client.get(signpost.url(&path)).send();
    let peer_path = |peer: &str, rest: &str| format!("/api/rooms/secret/peers/{peer}{rest}");

    // An SSE stream opened with a good token in its query, and one refused.
    let stream = get(peer_path(&alice, &format!("/events?token={alice_token}")))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let ready = stream.bytes_stream().eventsource().next().await.unwrap();
    assert_eq!(ready.unwrap().event, "ready");
    let refused = get(peer_path(&alice, "/events?token=SECRET-sse"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Polls, answered and refused.
    let polled = get(peer_path(
        &bob,
        &format!("/messages?token={bob_token}&after=0&wait=0"),
    ))
    .await
    .unwrap();
    assert_eq!(polled.status(), 200);
    let refused = get(peer_path(&bob, "/messages?token=SECRET-poll&wait=0"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A token in a header, on a route Rocket serves.
    let ice = signpost
        .client
        .get(signpost.url(&peer_path(&alice, "/ice-servers")))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(ice.status(), 200);
    // An unknown route, and a request too malformed for any route.
    assert_eq!(
        get("/nowhere?token=SECRET-unknown".into())
            .await
            .unwrap()
            .status(),
        404
    );
    let malformed = raw_request(
        &signpost.base,
        "GET /api/rooms/secret?token=SECRET-malformed HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
    );
    assert!(malformed.contains(" 400 "), "{malformed}");
    // Leave beacons: one refused, then bob's, which leaves.
    let beacon = |token: String| {
        signpost
            .client
            .post(signpost.url(&peer_path(&bob, &format!("/leave?token={token}"))))
            .body(format!("token={token}"))
            .send()
    };
    assert_eq!(beacon("SECRET-beacon".into()).await.unwrap().status(), 401);
    assert_eq!(beacon(bob_token.clone()).await.unwrap().status(), 204);
    let log = signpost.stop().join("\n");

    // The level took effect: Rocket's launch banner is information it only gives when asked.
    assert!(log.contains("rocket::launch"), "{log}");
    assert!(
        log.contains(&format!("leave room=secret peer={bob}")),
        "{log}"
    );
    for secret in [
        alice_token.as_str(),
        bob_token.as_str(),
        "SECRET-",
        "token=",
    ] {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
    assert_eq!(queries(&log), Vec::<&str>::new(), "{log}");
}
