//! A hostile HTTP proxy for the browser tests, in front of a test server: it can hold back SSE
//! responses (as a buffering proxy does), cut SSE streams after a while, and answer long polls
//! that wait too long with a 504 (as a proxy with a short read timeout does). It records every
//! body it relays, both ways, and can alter one character of the first offer a peer sends (as
//! a server or proxy in the middle would, tests/e2ee.rs).
//!
//! Each request gets its own upstream connection and `Connection: close`, so that the proxy sees
//! every request line (keep-alive would hide later requests of a connection).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to which requests.
#[derive(Clone, Copy, Default)]
pub struct Hostility {
    /// Never pass on any byte of an SSE response (the connection stays open).
    pub hold_streams: bool,
    /// Close SSE connections this long after they open.
    pub cut_streams_after: Option<Duration>,
    /// Answer 504 to a long poll that has not been answered within this long.
    pub cut_polls_after: Option<Duration>,
    /// Change one character of the first `offer`'s `data` a POST carries (its sealed `ct`, or
    /// its clear `sdp`), once, and pass the rest on unchanged.
    pub alter_first_offer: bool,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request target: path and query.
    pub target: String,
    /// Whether the proxy cut it (504 for a poll, a closed connection for a stream).
    pub cut: bool,
    /// The request body as the proxy passed it on (after any alteration).
    #[allow(dead_code)] // read by tests/e2ee.rs
    pub request_body: Vec<u8>,
    /// The response bytes relayed so far, head included (an SSE stream grows while it lasts).
    pub response: Vec<u8>,
    /// Whether the proxy altered this request's body.
    pub altered: bool,
}

/// A proxy listening on 127.0.0.1; it stops when dropped.
pub struct Proxy {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str, hostility: Hostility) -> Proxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let _ = relay(client, &upstream, hostility, &seen).await;
                    });
                }
            })
        };
        Proxy { base, seen, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far, in the order they arrived.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one request and its response, applying `hostility`.
async fn relay(
    mut client: TcpStream,
    upstream: &str,
    hostility: Hostility,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let Some((head, mut body_start)) = read_head(&mut client).await? else {
        return Ok(());
    };
    // A body with a length is read whole before it goes on, to be recorded and maybe altered.
    let length = content_length(&head);
    while body_start.len() < length {
        let mut chunk = vec![0u8; length - body_start.len()];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body_start.extend_from_slice(&chunk[..n]);
    }
    let target = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();

    let path = target.split('?').next().unwrap_or("");
    let is_stream = path.ends_with("/events");
    let is_poll = head.starts_with("GET ") && path.ends_with("/messages");
    let index = {
        let mut seen = seen.lock();
        // Decided under the lock, so that of two offers in flight only one is altered.
        let mut altered = false;
        if hostility.alter_first_offer && !seen.iter().any(|request| request.altered) {
            if let Some(body) = alter_offer(&body_start) {
                body_start = body;
                altered = true;
            }
        }
        seen.push(Seen {
            target: target.clone(),
            cut: false,
            request_body: body_start.clone(),
            response: Vec::new(),
            altered,
        });
        seen.len() - 1
    };
    let mut request = String::new();
    for line in with_content_length(&head, body_start.len()).lines() {
        if !line.is_empty() && !line.to_ascii_lowercase().starts_with("connection:") {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(request.as_bytes()).await?;
    server.write_all(&body_start).await?;
    let record = |bytes: &[u8]| seen.lock()[index].response.extend_from_slice(bytes);
    let mark_cut = || seen.lock()[index].cut = true;

    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    // The rest of the request body, if any, goes up as it comes.
    let upload = tokio::io::copy(&mut client_read, &mut server_write);
    if is_stream && hostility.hold_streams {
        // Swallow the stream; the browser sees an open connection and nothing on it.
        // When the browser gives up on it, the proxy closes the upstream connection too.
        let mut sink = tokio::io::sink();
        let swallow = tokio::io::copy(&mut server_read, &mut sink);
        tokio::select! {
            _ = upload => {}
            _ = swallow => {}
        }
        return Ok(());
    }
    let limit = match (is_stream, is_poll) {
        (true, _) => hostility.cut_streams_after,
        (_, true) => hostility.cut_polls_after,
        _ => None,
    };
    let download = copy_until(&mut server_read, &mut client_write, limit, &record);
    tokio::pin!(upload);
    let outcome = tokio::select! {
        outcome = download => outcome?,
        // The client closed its side: nothing more to relay.
        _ = &mut upload => Relayed::Done,
    };
    match outcome {
        Relayed::Done => {}
        Relayed::CutAfterBytes => mark_cut(),
        Relayed::CutBeforeAnyByte if is_poll => {
            mark_cut();
            client_write
                .write_all(
                    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/html\r\n\
                      Content-Length: 22\r\nConnection: close\r\n\r\n<h1>504 timeout</h1>\r\n",
                )
                .await?;
        }
        Relayed::CutBeforeAnyByte => mark_cut(),
    }
    client_write.shutdown().await
}

enum Relayed {
    Done,
    CutBeforeAnyByte,
    CutAfterBytes,
}

/// Copies until the reader ends, or until `limit` has passed.
async fn copy_until(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    limit: Option<Duration>,
    record: &impl Fn(&[u8]),
) -> std::io::Result<Relayed> {
    let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let mut buffer = vec![0u8; 16 * 1024];
    let mut copied = 0usize;
    loop {
        let read = reader.read(&mut buffer);
        let n = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                Ok(n) => n?,
                Err(_) if copied == 0 => return Ok(Relayed::CutBeforeAnyByte),
                Err(_) => return Ok(Relayed::CutAfterBytes),
            },
            None => read.await?,
        };
        if n == 0 {
            return Ok(Relayed::Done);
        }
        record(&buffer[..n]);
        writer.write_all(&buffer[..n]).await?;
        copied += n;
    }
}

/// Reads a request head; returns it and whatever body bytes came with it.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
            return Ok(Some((head, buffer[end + 4..].to_vec())));
        }
        if buffer.len() > 64 * 1024 {
            return Ok(None);
        }
    }
}

/// The `Content-Length` of a request head, 0 without one.
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// `head` with its `Content-Length` set to `length`.
fn with_content_length(head: &str, length: usize) -> String {
    let mut out = String::new();
    for line in head.split("\r\n").filter(|line| !line.is_empty()) {
        let is_length = line
            .split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"));
        if is_length {
            out.push_str(&format!("Content-Length: {length}"));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

/// A send body (one message or an array) with one character of its first offer's `data`
/// changed: in the middle of the sealed `ct`, or of the clear `sdp`. None if it has no offer.
fn alter_offer(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages: Vec<&mut serde_json::Value> = match &mut value {
        serde_json::Value::Array(messages) => messages.iter_mut().collect(),
        message => vec![message],
    };
    let offer = messages
        .into_iter()
        .find(|message| message["type"] == "offer")?;
    let data = &mut offer["data"];
    let field = if data["ct"].is_string() { "ct" } else { "sdp" };
    let text = data[field].as_str()?.to_owned();
    let middle = text.len() / 2;
    let was = text.as_bytes()[middle];
    let now = if was == b'A' { 'B' } else { 'A' };
    let mut changed = text.clone();
    changed.replace_range(middle..middle + 1, &now.to_string());
    data[field] = serde_json::Value::String(changed);
    serde_json::to_vec(&value).ok()
}
