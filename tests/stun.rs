//! The built-in STUN server, asked by a client we did not write (coturn's
//! `turnutils_stunclient`), fed garbage, and stopped with the server.

mod common;

use common::external;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;

use common::eventually::eventually;
use common::process;
use common::Server;
use serde_json::{json, Value};

/// A server with the STUN server on a free loopback port; returns it and that port, as
/// advertised to a joining peer.
async fn stun_server() -> (Server, u16, Value) {
    let server = Server::with(json!({"stun_bind": "127.0.0.1:0"})).await;
    let alice = server.join("stun", "alice").await;
    let urls: Vec<String> = alice.joined["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|server| server["urls"].as_array().unwrap().clone())
        .map(|url| url.as_str().unwrap().to_owned())
        .collect();
    let url = urls
        .iter()
        .find(|url| url.starts_with("stun:127.0.0.1:"))
        .unwrap_or_else(|| panic!("the built-in STUN server is advertised: {urls:?}"));
    let port = url.rsplit(':').next().unwrap().parse().unwrap();
    let ice_servers = alice.joined["ice_servers"].clone();
    (server, port, ice_servers)
}

/// Runs coturn's STUN client against `port` and returns the reflexive address it reports.
async fn real_client_binding(port: u16) -> Option<SocketAddr> {
    let output = tokio::task::spawn_blocking(move || {
        // coturn's turnutils_stunclient (apt-get install coturn; .ci/run does)
        let mut command = Command::new("turnutils_stunclient");
        command.args(["-p", &port.to_string(), "127.0.0.1"]);
        process::run("turnutils_stunclient", command, common::EVENT_DEADLINE)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.lines()
        .find_map(|line| line.split("UDP reflexive addr: ").nth(1))
        .map(|address| address.trim().parse().expect("a socket address"))
}

/// The counters the STUN server reports, from `/metrics`.
async fn stun_counts(server: &Server) -> (u64, u64) {
    let text = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| {
        let prefix = format!("signpost_stun_requests_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in {text}"))
            .parse()
            .unwrap()
    };
    (count("answered"), count("ignored"))
}

/// A real STUN client learns its reflexive address from signpost, whose URL the join response
/// advertised next to the configured servers.
#[cfg_attr(
    signpost_missing = "coturn",
    ignore = "needs coturn: apt-get install coturn (README.md, Prerequisites)"
)]
#[tokio::test]
async fn a_real_stun_client_gets_its_reflexive_address() {
    if !external::can_run(
        "a_real_stun_client_gets_its_reflexive_address",
        external::programs(&["turnutils_stunclient"], "coturn"),
    ) {
        return;
    }
    let (server, port, _) = stun_server().await;
    let reflexive = real_client_binding(port)
        .await
        .expect("turnutils_stunclient reports a reflexive address");
    assert_eq!(reflexive.ip().to_string(), "127.0.0.1");
    assert_ne!(reflexive.port(), 0);
    assert!(stun_counts(&server).await.0 >= 1, "answers are counted");
    server.stop().await;
}

/// The answer names the exact address and port the request came from (decoded here, not with
/// the server's code), has the request's transaction id and a correct FINGERPRINT.
#[tokio::test]
async fn the_answer_is_the_senders_own_address() {
    let (server, port, _) = stun_server().await;
    // Async, so that waiting does not block the server, which runs on this test's runtime.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let transaction = *b"signpost-txn";
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&transaction);
    socket.send_to(&request, ("127.0.0.1", port)).await.unwrap();
    let mut buffer = [0u8; 1500];
    let (length, _) = tokio::time::timeout(common::EVENT_DEADLINE, socket.recv_from(&mut buffer))
        .await
        .expect("an answer in time")
        .unwrap();
    let response = &buffer[..length];

    assert_eq!(&response[0..2], &[0x01, 0x01], "Binding success");
    assert_eq!(&response[8..20], &transaction);
    let mut attributes = std::collections::HashMap::new();
    let mut offset = 20;
    while offset < response.len() {
        let kind = u16::from_be_bytes([response[offset], response[offset + 1]]);
        let len = u16::from_be_bytes([response[offset + 2], response[offset + 3]]) as usize;
        attributes.insert(
            kind,
            (offset, response[offset + 4..offset + 4 + len].to_vec()),
        );
        offset += 4 + len.div_ceil(4) * 4;
    }
    let (_, xor_mapped) = &attributes[&0x0020];
    let port_seen = u16::from_be_bytes([xor_mapped[2], xor_mapped[3]]) ^ 0x2112;
    let ip_seen: [u8; 4] = std::array::from_fn(|i| xor_mapped[4 + i] ^ [0x21, 0x12, 0xa4, 0x42][i]);
    let mine = socket.local_addr().unwrap();
    assert_eq!(SocketAddr::from((ip_seen, port_seen)), mine);

    let (fingerprint_at, fingerprint) = &attributes[&0x8028];
    assert_eq!(
        *fingerprint_at,
        response.len() - 8,
        "FINGERPRINT comes last"
    );
    let crc = crc32fast::hash(&response[..*fingerprint_at]) ^ 0x5354_554e;
    assert_eq!(fingerprint.as_slice(), crc.to_be_bytes());
    server.stop().await;
}

/// Garbage (empty, HTTP, truncated, a STUN response, random bytes, oversized) gets no answer,
/// is counted as ignored, and the server keeps answering real clients afterwards.
#[cfg_attr(
    signpost_missing = "coturn",
    ignore = "needs coturn: apt-get install coturn (README.md, Prerequisites)"
)]
#[tokio::test]
async fn garbage_is_ignored_and_the_server_keeps_answering() {
    if !external::can_run(
        "garbage_is_ignored_and_the_server_keeps_answering",
        external::programs(&["turnutils_stunclient"], "coturn"),
    ) {
        return;
    }
    let (server, port, _) = stun_server().await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12],
        // A Binding *response*, which a server must not answer.
        [
            &[0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42][..],
            &[7; 12],
        ]
        .concat(),
        // A length that runs past the datagram.
        [
            &[0x00, 0x01, 0x00, 0x40, 0x21, 0x12, 0xa4, 0x42][..],
            &[7; 12],
        ]
        .concat(),
        (0..=255u8).cycle().take(1400).collect(),
        vec![0xff; 9000],
    ];
    for datagram in &junk {
        socket.send_to(datagram, ("127.0.0.1", port)).unwrap();
    }
    // The STUN server reads datagrams in order, so once a real client is answered every datagram
    // sent before it has been dealt with.
    assert!(real_client_binding(port).await.is_some(), "still answering");
    let (answered, ignored) = stun_counts(&server).await;
    assert_eq!(
        ignored,
        junk.len() as u64,
        "every piece of garbage was ignored"
    );
    assert!(answered >= 1);
    // An answer to the garbage would have been sent, and so queued on this loopback socket,
    // before the real client's answer.
    socket.set_nonblocking(true).unwrap();
    let nothing = socket.recv_from(&mut [0u8; 64]).unwrap_err();
    assert_eq!(
        nothing.kind(),
        std::io::ErrorKind::WouldBlock,
        "no answer was sent to the garbage's sender"
    );
    server.stop().await;
}

/// The STUN socket is closed when the server shuts down: its port can be bound again.
#[tokio::test]
async fn the_stun_server_stops_with_the_server() {
    let (server, port, _) = stun_server().await;
    assert!(
        UdpSocket::bind(("127.0.0.1", port)).is_err(),
        "in use while running"
    );
    server.stop().await;
    // The serving task ends on Shutdown; give the runtime a moment to drop it.
    eventually(&format!("port {port} is free"), || async {
        UdpSocket::bind(("127.0.0.1", port)).is_ok()
    })
    .await;
}

/// `stun_url` overrides the advertised URL, and without `stun_bind` nothing is advertised.
#[tokio::test]
async fn the_advertised_url_follows_the_configuration() {
    let server =
        Server::with(json!({"stun_bind": "127.0.0.1:0", "stun_url": "stun:stun.example.org:3478"}))
            .await;
    let alice = server.join("url", "alice").await;
    assert_eq!(
        alice.joined["ice_servers"],
        json!([{"urls": ["stun:stun.example.org:3478"]}])
    );
    server.stop().await;

    let server = Server::start().await;
    let alice = server.join("url", "alice").await;
    assert_eq!(alice.joined["ice_servers"], json!([]));
    server.stop().await;
}
