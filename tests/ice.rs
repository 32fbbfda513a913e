//! ICE servers: TURN credentials in coturn's `use-auth-secret` format, checked against an HMAC
//! computed here from SHA-1 alone, against a fixed vector, and by a real coturn server.

mod common;

use common::external;
use common::process::{self, ChildProcess, Watch};

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::Server;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

const SECRET: &str = "correct horse battery staple";

/// HMAC-SHA1 from its definition (RFC 2104), so that the server's credentials are checked
/// against code that shares nothing with it but SHA-1.
fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha1::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha1::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn expected_credential(secret: &str, username: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(secret.as_bytes(), username.as_bytes()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn turn_server(extra: Value) -> Server {
    let mut settings = json!({
        "turn_urls": ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"],
        "turn_secret": SECRET,
        "ice_servers": [{"urls": ["stun:stun.example.org:3478"]}],
    });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    Server::with(settings).await
}

/// The TURN entry of an `ice_servers` list (the one with credentials).
fn turn_entry(ice_servers: &Value) -> &Value {
    ice_servers
        .as_array()
        .expect("ice_servers is a list")
        .iter()
        .find(|server| server.get("username").is_some())
        .expect("a TURN entry with credentials")
}

/// The independent HMAC above is itself right: RFC 2202's HMAC-SHA1 test cases 2 and 6.
#[test]
fn the_reference_hmac_matches_rfc_2202() {
    let hex = |bytes: [u8; 20]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    assert_eq!(
        hex(hmac_sha1(
            &[0xaa; 80],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "aa4ae5e15272d00e95705637ce8a3b55ed402112"
    );
    // And a fixed coturn-style vector, computed with
    // `echo -n "1700000000:alice" | openssl dgst -sha1 -hmac north -binary | base64`.
    assert_eq!(
        expected_credential("north", "1700000000:alice"),
        "Cd/49soE35ICqcJF/bCTn8Z4OyE="
    );
}

/// A joining peer gets the configured servers plus TURN with `<expiry>:<peer_id>` and
/// `base64(HMAC-SHA1(secret, username))`, expiring 24 h from now by default; the secret itself
/// appears nowhere in the response.
#[tokio::test]
async fn join_hands_out_coturn_credentials_that_expire_in_a_day() {
    let server = turn_server(json!({})).await;
    let before = unix_now();
    let response = server
        .client
        .post(server.url("/api/rooms/ice/peers"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let after = unix_now();
    assert_eq!(response.status(), 201);
    let text = response.text().await.unwrap();
    assert!(!text.contains(SECRET), "the secret never leaves the server");
    let body: Value = serde_json::from_str(&text).unwrap();
    let peer_id = body["peer_id"].as_str().unwrap();

    let ice_servers = &body["ice_servers"];
    assert_eq!(
        ice_servers[0],
        json!({"urls": ["stun:stun.example.org:3478"]})
    );
    let turn = turn_entry(ice_servers);
    assert_eq!(
        turn["urls"],
        json!([
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:5349?transport=tcp"
        ])
    );
    let username = turn["username"].as_str().unwrap();
    let (expiry, name) = username.split_once(':').expect("<expiry>:<peer_id>");
    assert_eq!(name, peer_id);
    let expiry: u64 = expiry.parse().expect("expiry is unix seconds");
    assert!(
        (before + 86_400..=after + 86_400).contains(&expiry),
        "expires 24 h from now: {expiry} vs now {before}"
    );
    assert_eq!(body["ice_servers_expires_at"], json!(expiry));
    assert_eq!(
        turn["credential"],
        json!(expected_credential(SECRET, username))
    );
    assert_eq!(
        body["ice_servers_url"],
        json!(format!("/api/rooms/ice/peers/{peer_id}/ice-servers"))
    );
    server.stop().await;
}

/// The refresh endpoint answers only the peer itself (header or `?token=`), with credentials
/// whose lifetime is `turn_credential_ttl_secs` from the moment of the request.
#[tokio::test]
async fn refresh_is_authenticated_and_honours_the_configured_lifetime() {
    let server = turn_server(json!({"turn_credential_ttl_secs": 600})).await;
    let alice = server.join("refresh", "alice").await;
    let bob = server.join("refresh", "bob").await;
    let path = alice.joined["ice_servers_url"].as_str().unwrap().to_owned();

    let (status, body) = server.get_json(&path).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let response = server
        .client
        .get(server.url(&path))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "another peer's token is refused");

    let before = unix_now();
    let (status, body) = server
        .get_json(&format!("{path}?token={}", alice.token))
        .await;
    let after = unix_now();
    assert_eq!(status, 200);
    let expiry = body["expires_at"].as_u64().expect("expires_at");
    assert!(
        (before + 600..=after + 600).contains(&expiry),
        "{expiry} vs {before}"
    );
    let turn = turn_entry(&body["ice_servers"]);
    let username = format!("{expiry}:{}", alice.id);
    assert_eq!(turn["username"], json!(username));
    assert_eq!(
        turn["credential"],
        json!(expected_credential(SECRET, &username))
    );
    server.stop().await;
}

/// Without a TURN secret, peers get the configured servers as they are and no expiry.
#[tokio::test]
async fn without_turn_the_configured_servers_pass_through() {
    let static_servers =
        json!([{"urls": ["turn:relay.example.org"], "username": "u", "credential": "p"}]);
    let server = Server::with(json!({"ice_servers": static_servers})).await;
    let alice = server.join("plain", "alice").await;
    assert_eq!(alice.joined["ice_servers"], static_servers);
    assert_eq!(alice.joined["ice_servers_expires_at"], Value::Null);
    let response = server
        .client
        .get(server.url(alice.joined["ice_servers_url"].as_str().unwrap()))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"ice_servers": static_servers, "expires_at": null})
    );
    server.stop().await;
}

/// TURN URLs without a secret (an open relay), or a secret without URLs, are refused at start.
#[tokio::test]
async fn turn_configuration_must_be_complete() {
    for settings in [
        json!({"turn_urls": ["turn:turn.example.org"]}),
        json!({"turn_secret": "s"}),
        json!({"turn_urls": ["turn:turn.example.org"], "turn_secret": "s", "turn_credential_ttl_secs": 0}),
    ] {
        let error = signpost::build(common::test_figment(settings.clone()))
            .ignite()
            .await
            .expect_err(&format!("{settings} is refused"));
        assert!(
            matches!(error.kind(), rocket::error::ErrorKind::FailedFairings(_)),
            "{settings}: {error}"
        );
    }
}

/// A coturn server run as its own process, configured as the README says.
struct Coturn {
    _process: ChildProcess,
    port: u16,
    _scratch: ScratchDir,
}

/// A private directory for coturn's pid file and database, removed on drop.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Coturn {
    fn start(secret: &str) -> Coturn {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("signpost-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new("turnserver");
        command
            .args([
                "-n", // no config file: everything is on this command line
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--relay-ip=127.0.0.1",
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=signpost.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                // The test's peer address is loopback; never in production.
                "--allow-loopback-peers",
                "--log-file=stdout",
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
                &format!("--userdb={}", dir.join("turndb").display()),
            ])
            .stderr(Stdio::null());
        // coturn's turnserver (apt-get install coturn; .ci/run installs it).
        let mut process = ChildProcess::spawn("turnserver", command, Watch::Stdout);
        // Its log says when its listeners are up.
        process.read_until("its servers up", common::EVENT_DEADLINE, |line| {
            line.contains("Total General servers").then_some(())
        });
        Coturn {
            _process: process,
            port,
            _scratch: ScratchDir(dir),
        }
    }

    /// Whether coturn grants a TURN allocation to `username`/`password`, asked by coturn's own
    /// client (no data is sent: `-n 0`).
    fn allocates(&self, username: &str, password: &str) -> bool {
        let mut command = Command::new("turnutils_uclient");
        command
            .args(["-n", "0", "-m", "1", "-c", "-X", "-e", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-u", username, "-w", password])
            .arg("127.0.0.1");
        // A hang's bound, not a pace: a refused allocation takes coturn's client several seconds
        // of retransmissions, and more on a loaded machine (over 10 s once, in a full run).
        process::run("turnutils_uclient", command, Duration::from_secs(60))
            .status
            .success()
    }
}

/// The credentials a peer receives at join work on a real coturn configured with the same
/// secret; a tampered credential and an expired username are refused by it.
#[cfg_attr(
    signpost_missing = "coturn",
    ignore = "needs coturn: apt-get install coturn (README.md, Prerequisites)"
)]
#[tokio::test]
async fn a_real_coturn_accepts_the_credentials_signpost_hands_out() {
    if !external::can_run(
        "a_real_coturn_accepts_the_credentials_signpost_hands_out",
        external::programs(&["turnserver", "turnutils_uclient"], "coturn"),
    ) {
        return;
    }
    let server = turn_server(json!({"turn_urls": ["turn:127.0.0.1:3478"]})).await;
    let coturn = Coturn::start(SECRET);
    let alice = server.join("coturn", "alice").await;
    let turn = turn_entry(&alice.joined["ice_servers"]);
    let username = turn["username"].as_str().unwrap().to_owned();
    let credential = turn["credential"].as_str().unwrap().to_owned();

    let granted = tokio::task::spawn_blocking(move || {
        let tampered = format!("x{credential}");
        let expired_user = format!("{}:{}", unix_now() - 60, "alice");
        let expired_password = expected_credential(SECRET, &expired_user);
        (
            coturn.allocates(&username, &credential),
            coturn.allocates(&username, &tampered),
            coturn.allocates(&expired_user, &expired_password),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        granted,
        (true, false, false),
        "(signpost's credential, tampered, expired)"
    );
    server.stop().await;
}
