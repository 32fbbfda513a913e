//! What one connection may hold, in time and in number: a request head or body that arrives too
//! slowly is cut off, a client that stops reading loses its connection, and one client address
//! may only hold so many connections. These tests speak HTTP over raw sockets, since a client
//! library would neither trickle a request nor stop reading on purpose. Other clients are
//! played by other loopback source addresses (all of 127.0.0.0/8 is local).

#[macro_use]
mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Server, EVENT_DEADLINE};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The address `server` listens on.
fn address(server: &Server) -> SocketAddr {
    server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("a base URL of address:port")
}

/// A connection to `server` from the loopback address `source`; with `receive_buffer`, the
/// socket's receive buffer is made that small before it connects (the kernel may round it up).
async fn connect(server: &Server, source: &str, receive_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let source: IpAddr = source.parse().expect("a source address");
    socket.bind(SocketAddr::new(source, 0)).expect("bind");
    socket.connect(address(server)).await.expect("connect")
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Parses a whole response head and as much of the body as `bytes` holds after it; `None`
    /// while the head is incomplete.
    fn parse(bytes: &[u8]) -> Option<(Raw, usize)> {
        let end = bytes.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()?
            .split(' ')
            .nth(1)?
            .parse()
            .expect("a status code");
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let raw = Raw {
            status,
            headers,
            body: bytes[end..].to_vec(),
        };
        Some((raw, end))
    }
}

/// Reads until the server closes the connection (end of file, or a reset after it), failing the
/// test if it has not within [`EVENT_DEADLINE`]; returns everything read.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut bytes = Vec::new();
    let read = async {
        let mut buffer = [0; 64 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => bytes.extend_from_slice(&buffer[..count]),
            }
        }
    };
    tokio::time::timeout(EVENT_DEADLINE, read)
        .await
        .expect("the server did not close the connection");
    bytes
}

/// Sends `GET /healthz` on a kept-alive connection and reads one answer (its body has a
/// `Content-Length`), or the end of the connection when the server closes it after answering.
async fn healthz(stream: &mut TcpStream) -> Raw {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("request written");
    let mut bytes = Vec::new();
    let read = async {
        let mut buffer = [0; 4096];
        loop {
            if let Some((raw, _)) = Raw::parse(&bytes) {
                let length: usize = raw
                    .header("content-length")
                    .map_or(0, |length| length.parse().expect("a length"));
                if raw.body.len() >= length {
                    return raw;
                }
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return Raw::parse(&bytes).expect("a whole answer").0,
                Ok(count) => bytes.extend_from_slice(&buffer[..count]),
            }
        }
    };
    tokio::time::timeout(EVENT_DEADLINE, read)
        .await
        .expect("no answer to GET /healthz")
}

/// Writes `byte` to `writer` every `period`, up to `count` times or until the server stops
/// taking them: a client trickling its request.
fn trickle(
    mut writer: impl AsyncWrite + Unpin + Send + 'static,
    byte: &'static [u8],
    count: usize,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        for _ in 0..count {
            ticks.tick().await;
            if writer.write_all(byte).await.is_err() {
                break;
            }
        }
    })
}

/// Sends `head` (a POST announcing `Content-Length: 100`) and the body's first byte, then
/// trickles a byte every 200 ms (the whole body would take 20 s, twice [`EVENT_DEADLINE`]), and
/// asserts that the answer is `408 body_timeout` with `Connection: close`, that the server
/// closes the connection, and that it waited the timeout (`timeout`) first.
async fn assert_trickled_body_refused(server: &Server, head: String, timeout: Duration) {
    let stream = connect(server, "127.0.0.1", None).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            format!("{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[")
                .as_bytes(),
        )
        .await
        .expect("head written");
    let started = Instant::now();
    let trickler = trickle(writer, b" ", 99, Duration::from_millis(200));
    let bytes = read_until_closed(&mut reader).await;
    let took = started.elapsed();
    trickler.abort();
    let (answer, _) = Raw::parse(&bytes).expect("an answer before the close");
    assert_eq!(
        (answer.status, answer.json()["error"].as_str()),
        (408, Some("body_timeout")),
        "{answer:?}"
    );
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(
        took >= timeout,
        "answered after {took:?}, before the {timeout:?} timeout"
    );
}

store_tests! {
    /// A join body (a route Rocket answers) trickled a byte at a time is answered `408
    /// body_timeout` once `body_read_timeout_secs` has passed since the body began, and the
    /// connection closes: the deadline is for the whole body, not between two bytes.
    async fn a_trickled_join_body_gets_408_and_the_connection_closes() {
        let server = Server::with(json!({"body_read_timeout_secs": 1.0})).await;
        let head = "POST /api/rooms/trickle/peers HTTP/1.1\r\nHost: test\r\n".to_owned();
        assert_trickled_body_refused(&server, head, Duration::from_secs(1)).await;
        // Nobody joined.
        let (status, _) = server.get_json("/api/rooms/trickle").await;
        assert_eq!(status, 404);
    }

    /// A send body (a relay route, served by the front itself) trickled a byte at a time gets
    /// the same `408 body_timeout`, and its connection closes.
    async fn a_trickled_send_body_gets_408_and_the_connection_closes() {
        let server = Server::with(json!({"body_read_timeout_secs": 1.0})).await;
        let alice = server.join("trickle", "alice").await;
        let head = format!(
            "POST /api/rooms/trickle/messages HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n",
            alice.token
        );
        assert_trickled_body_refused(&server, head, Duration::from_secs(1)).await;
    }

    /// A connection trickling its first request head, a header line every 200 ms, is closed
    /// once Rocket's `keep_alive` (here 1 s) has passed, however steadily it trickles: the
    /// header read timeout covers a connection's first request as well as its idle ones.
    async fn a_trickled_first_head_is_closed() {
        let figment = common::test_figment(json!({})).merge(("keep_alive", 1));
        let server = Server::from_figment(figment).await;
        let stream = connect(&server, "127.0.0.1", None).await;
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            .await
            .expect("first line written");
        // 100 lines, 20 s: it would outlast EVENT_DEADLINE.
        let trickler = trickle(writer, b"X-Trickle: 1\r\n", 100, Duration::from_millis(200));
        let bytes = read_until_closed(&mut reader).await;
        trickler.abort();
        if let Some((answer, _)) = Raw::parse(&bytes) {
            assert_ne!(answer.status, 200, "the trickled request was served: {answer:?}");
        }
    }

    /// A client that stops reading its SSE stream (a tiny receive buffer, and big messages sent
    /// to it) loses the connection after `write_timeout_secs`: the stream is released like any
    /// closed stream (`signpost_sse_streams` goes back down, and with no stream the peer times
    /// out with reason `timeout`, not `evicted`), and the socket ends.
    async fn a_stream_whose_client_stops_reading_is_closed() {
        let server = Server::with(json!({
            "write_timeout_secs": 1.0,
            "peer_timeout_secs": 1.0,
            "send_rate_per_sec": 1e9,
            "send_burst": 1e9,
            "mailbox_capacity": 100000,
            // Room for the megabytes the stalled stream is sent: a full mailbox would evict
            // Bob before his write times out.
            "mailbox_max_bytes": 1 << 26,
            "client_max_held_bytes": 1 << 30,
            "max_held_bytes": 1 << 30,
        }))
        .await;
        let alice = server.join("stall", "alice").await;
        let bob = server.join("stall", "bob").await;
        let mut alice_events = alice.events(None).await;
        let mut stream = connect(&server, "127.0.0.1", Some(4096)).await;
        let request = format!(
            "GET {}/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n",
            bob.peer_path(),
            bob.token
        );
        stream.write_all(request.as_bytes()).await.expect("request written");
        // Bob reads until his stream is ready, then never again.
        let mut opening = Vec::new();
        while !opening.windows(11).any(|window| window == b"event:ready") {
            let mut buffer = [0; 4096];
            let count = tokio::time::timeout(EVENT_DEADLINE, stream.read(&mut buffer))
                .await
                .expect("the stream opens")
                .expect("read");
            assert_ne!(count, 0, "the stream ended before ready");
            opening.extend_from_slice(&buffer[..count]);
        }
        assert_eq!(Raw::parse(&opening).expect("a head").0.status, 200);
        // Up to 8 MiB for Bob, far more than a 4 KiB receive window and the server's socket
        // buffer and write buffer hold. Once Bob's connection is closed and he has timed out,
        // he is no longer a recipient.
        let big = "x".repeat(60 * 1024);
        for _ in 0..10 {
            let batch: Vec<Value> = (0..14)
                .map(|_| json!({"type": "offer", "to": bob.id, "data": big}))
                .collect();
            let status = alice.send(Value::Array(batch)).await.status().as_u16();
            if status == 409 {
                break;
            }
            assert_eq!(status, 202);
        }
        let leave = loop {
            let event = alice_events.next_message().await;
            if event["type"] == "leave" {
                break event;
            }
        };
        assert_eq!(leave["data"], json!({"peer_id": bob.id, "reason": "timeout"}));
        let metrics = server.client.get(server.url("/metrics")).send().await;
        let metrics = metrics.expect("metrics").text().await.expect("metrics body");
        assert!(
            metrics.contains("signpost_sse_streams 1\n"),
            "only Alice's stream is open: {metrics}"
        );
        // The server closed Bob's socket: once he reads what it had sent, it ends.
        read_until_closed(&mut stream).await;
    }

    /// The `max_connections_per_client + 1`st connection from one address is answered `429
    /// too_many_connections` with `Retry-After` and closed; other addresses are not affected,
    /// and once one of the address's connections closes, it may open another.
    async fn connections_beyond_the_cap_are_refused_until_one_closes() {
        let server = Server::with(json!({"max_connections_per_client": 2})).await;
        let mut first = connect(&server, "127.0.0.1", None).await;
        let mut second = connect(&server, "127.0.0.1", None).await;
        assert_eq!(healthz(&mut first).await.status, 200);
        assert_eq!(healthz(&mut second).await.status, 200);

        let mut third = connect(&server, "127.0.0.1", None).await;
        let refused = healthz(&mut third).await;
        assert_eq!(
            (refused.status, refused.json()["error"].as_str()),
            (429, Some("too_many_connections")),
            "{refused:?}"
        );
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(refused.header("connection"), Some("close"));
        read_until_closed(&mut third).await;

        let mut elsewhere = connect(&server, "127.0.0.2", None).await;
        assert_eq!(healthz(&mut elsewhere).await.status, 200, "another address");
        // Both of the address's connections are still served.
        assert_eq!(healthz(&mut first).await.status, 200);

        drop(first);
        // The server learns of the close when it reads the end of the connection, a moment
        // after the client closed it: until then a new connection may still be refused.
        let freed = async {
            loop {
                let mut next = connect(&server, "127.0.0.1", None).await;
                if healthz(&mut next).await.status == 200 {
                    return next;
                }
            }
        };
        let _next = tokio::time::timeout(EVENT_DEADLINE, freed)
            .await
            .expect("a closed connection frees its place");
    }

    /// Connections from a trusted proxy are not counted: it carries many clients.
    async fn a_trusted_proxys_connections_are_not_capped() {
        let server = Server::with(json!({
            "max_connections_per_client": 2,
            "trusted_proxies": ["127.0.0.1/32"],
        }))
        .await;
        let mut open = Vec::new();
        for _ in 0..5 {
            let mut stream = connect(&server, "127.0.0.1", None).await;
            assert_eq!(healthz(&mut stream).await.status, 200);
            open.push(stream);
        }
        // The cap does hold for an address that is not a proxy.
        for _ in 0..2 {
            let mut stream = connect(&server, "127.0.0.2", None).await;
            assert_eq!(healthz(&mut stream).await.status, 200);
            open.push(stream);
        }
        let mut over = connect(&server, "127.0.0.2", None).await;
        assert_eq!(healthz(&mut over).await.status, 429);
    }
}
